"""Where the scheduler's entries come from: the modules', and a program's own source.

`combined` merges the entries declared in modules with those of a `ScheduleSource` (Django:
``LEVERET["SCHEDULES"]`` and the database), the modules' winning on a name both use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from leveret.actors.schedules import Schedule
from leveret.services.observability.logs import get_logger

log = get_logger("leveret.scheduler")


@dataclass(frozen=True, slots=True)
class ScheduleSource:
    """Entries from elsewhere than modules (Django: ``LEVERET["SCHEDULES"]`` and the
    database), added by a program embedding the commands.

    Attributes:
        entries: Returns them; asked again while leading when `live`.
        live: They may change while running (a database): the leader asks again.
    """

    entries: Callable[[], Sequence[Schedule]]
    live: bool = False


def combined(
    fixed: Sequence[Schedule], source: ScheduleSource | None
) -> Sequence[Schedule] | Callable[[], Sequence[Schedule]]:
    """The entries of modules (`fixed`) and of `source`: a list, or a callable when the
    source is live. On a name both use, the module's entry wins (logged once, not at every
    reload). A source that fails keeps the entries it gave last; the modules' entries run
    regardless."""

    last_read: list[Schedule] = []
    clashing: set[str] = set()  # logged already: once per entry, not at every reload

    def current() -> list[Schedule]:
        merged = {entry.name: entry for entry in fixed}
        clashes = set()
        extra: Sequence[Schedule] = ()
        if source is not None:
            try:
                extra = last_read[:] = source.entries()
            except Exception as exc:  # noqa: BLE001  # the modules' entries run regardless
                log.error(
                    "schedules_source_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    hint="the entries it gave last are kept",
                )
                extra = last_read
        for entry in extra:
            if merged.get(entry.name, entry) is not entry:
                clashes.add(entry.name)
                if entry.name not in clashing:
                    log.warning(
                        "schedule_name_taken",
                        schedule=entry.name,
                        hint="an entry of the code has this name: the other one is ignored",
                    )
                continue
            merged[entry.name] = entry
        clashing.clear()  # a clash resolved and back later is logged again
        clashing.update(clashes)
        return list(merged.values())

    return current if source is not None and source.live else current()
