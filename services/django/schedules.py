"""A Django project's schedules: those of the modules of ``LEVERET["ACTORS"]`` (their
`periodic` actors) and ``LEVERET["SCHEDULES"]``, and the entries kept in the database
(`ScheduledMessage`, editable in the admin), which the leader reads again every few
seconds."""

from __future__ import annotations

from django.db import DatabaseError, close_old_connections

from leveret.actors.schedules import Schedule, schedules_in
from leveret.django.settings import load
from leveret.schemas.errors import LeveretError
from leveret.services.observability.logs import get_logger
from leveret.services.scheduling import ScheduleSource

log = get_logger("leveret.scheduler")


def project_source() -> ScheduleSource:
    """What the commands add to the schedules of the modules they run (``ACTORS``): those
    of ``SCHEDULES`` and the database's entries, read again while leading."""
    return ScheduleSource(
        lambda: [*schedules_in(load().schedules), *database_schedules()], live=True
    )


_last_read: list[Schedule] = []


def database_schedules() -> list[Schedule]:
    """The enabled entries of the database; an invalid one is logged and left out.

    While the database cannot be read (down, or not migrated yet), the entries read last
    are kept (none before the first read), and the modules' entries run regardless.
    """
    from leveret.django.models import ScheduledMessage

    global _last_read
    close_old_connections()
    try:
        entries = []
        rows = ScheduledMessage.objects.using(load().database).filter(enabled=True)
        for row in rows:
            try:
                entries.append(row.to_schedule())
            except (LeveretError, ValueError, TypeError) as exc:
                log.error("schedule_row_invalid", schedule=row.name, error=str(exc))
        _last_read = entries
        return entries
    except DatabaseError as exc:
        log.warning(
            "schedules_database_unavailable",
            error=str(exc).strip(),
            kept=len(_last_read),
            hint="run manage.py migrate; the entries read last are kept meanwhile",
        )
        return list(_last_read)
    finally:
        close_old_connections()
