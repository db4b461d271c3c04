"""Seeing an outbox backlog: rows waiting longer than ``LEVERET["OUTBOX_WARN_AFTER_S"]``
(no relay running, or one that cannot publish) and rows the relay gave up on.

``manage.py check`` (``leveret.W005``, ``leveret.W006``), ``manage.py leveret_status`` and
the dashboard mounted from ``leveret.django.dashboard`` warn about them, for a project that
uses the outbox (``OUTBOX`` or ``RELAY_IN_WORKER`` on). The database is read in a thread of
its own and waited for at most `READ_TIMEOUT_S`: a database that refuses connections, or
accepts them and never answers, delays none of them longer than that, and while one look
still hangs the next ones do not start another.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connections
from django.db.models import Count, Min

from leveret.django.settings import LeveretSettings, load
from leveret.schemas.errors import LeveretError
from leveret.services.observability.logs import get_logger
from leveret.services.observability.redaction import redact
from leveret.services.operations.status import Warning as StatusWarning

log = get_logger("leveret.django")

READ_TIMEOUT_S = 3.0
"""The longest a check, ``leveret_status`` or the dashboard waits for the outbox's figures."""


class OutboxUnreadable(LeveretError):
    """The outbox's figures could not be read (the database is down, slow, not migrated)."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits in the outbox.

    Attributes:
        waiting: Pending rows written more than ``warn_after_s`` ago.
        oldest_age_s: Seconds since the oldest of those was written (None: none).
        failed: Rows the relay gave up on (they wait for an operator).
        warn_after_s: The bound the figures were read with.
    """

    waiting: int
    oldest_age_s: float | None
    failed: int
    warn_after_s: float

    def backlog_message(self) -> str | None:
        """One line about the rows waiting too long, if any."""
        if not self.waiting:
            return None
        oldest = f" (the oldest {self.oldest_age_s:.0f} s)" if self.oldest_age_s else ""
        return (
            f"{self.waiting} outbox message(s) have waited more than {self.warn_after_s:g} s"
            f"{oldest}: no relay is running, or it cannot publish"
        )

    def failed_message(self) -> str | None:
        """One line about the rows the relay gave up on, if any."""
        if not self.failed:
            return None
        return f"{self.failed} outbox message(s) failed after their attempts and are not sent"


BACKLOG_HINT = (
    "Run manage.py leveret_relay (or set LEVERET['RELAY_IN_WORKER']); "
    "manage.py leveret_relay --status shows what waits."
)
FAILED_HINT = (
    "manage.py leveret_relay --status shows their errors (the admin too); fix the cause, "
    "then manage.py leveret_relay --retry-failed sends them again."
)

_lock = threading.Lock()
_reading: Future[Backlog] | None = None


def uses_outbox(found: LeveretSettings) -> bool:
    """Whether the project publishes through the outbox (so that a backlog matters)."""
    return found.outbox or found.relay_in_worker


def read_backlog(
    found: LeveretSettings | None = None, *, timeout_s: float = READ_TIMEOUT_S
) -> Backlog:
    """The outbox's backlog on the settings' database, read within `timeout_s`.

    Raises:
        OutboxUnreadable: The database did not answer in time, or failed; why.
    """
    global _reading
    found = found or load()
    with _lock:
        if _reading is not None and not _reading.done():
            raise OutboxUnreadable("the database has not answered the previous look yet")
        reading: Future[Backlog] = Future()
        _reading = reading
        threading.Thread(
            target=_read,
            args=(reading, found.database, found.outbox_warn_after_s),
            name="leveret-outbox-backlog",
            daemon=True,  # one that hangs on the database must not keep the process alive
        ).start()
    try:
        return reading.result(timeout_s)
    except FutureTimeout:
        raise OutboxUnreadable(
            f"the database {found.database!r} did not answer within {timeout_s:g} s"
        ) from None
    except Exception as exc:  # any database failure is the answer
        raise OutboxUnreadable(
            f"database {found.database!r}: {type(exc).__name__}: {redact(str(exc).strip())}"
        ) from exc


def _read(reading: Future[Backlog], using: str, warn_after_s: float) -> None:
    from leveret.django.models import OutboxMessage

    try:
        unsent = OutboxMessage.objects.using(using).filter(sent_at__isnull=True)
        now = datetime.now(UTC)
        late = unsent.filter(
            failed_at__isnull=True, created_at__lt=now - timedelta(seconds=warn_after_s)
        ).aggregate(count=Count("id"), oldest=Min("created_at"))
        oldest = late["oldest"]
        reading.set_result(
            Backlog(
                waiting=int(late["count"]),
                oldest_age_s=(now - oldest).total_seconds() if oldest is not None else None,
                failed=unsent.filter(failed_at__isnull=False).count(),
                warn_after_s=warn_after_s,
            )
        )
    except BaseException as exc:  # noqa: BLE001  # handed to the caller, who reports it
        reading.set_exception(exc)
    finally:
        connections[using].close()  # this thread's own connection


def backlog_warnings() -> list[StatusWarning]:
    """The status warnings (``leveret_status``, the mounted dashboard) about the outbox:
    ``outbox_backlog``, ``outbox_failed``, or ``outbox_unreadable`` when its figures could
    not be read; none for a project that does not use the outbox."""
    found = load()
    if found.problems or not uses_outbox(found):
        return []
    subject = f"outbox ({found.database})"
    try:
        backlog = read_backlog(found)
    except OutboxUnreadable as exc:
        return [StatusWarning("outbox_unreadable", subject, f"the outbox could not be read: {exc}")]
    found_warnings = []
    late = backlog.backlog_message()
    if late is not None:
        found_warnings.append(StatusWarning("outbox_backlog", subject, f"{late}. {BACKLOG_HINT}"))
    failed = backlog.failed_message()
    if failed is not None:
        found_warnings.append(StatusWarning("outbox_failed", subject, f"{failed}. {FAILED_HINT}"))
    return found_warnings
