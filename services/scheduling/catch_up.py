"""What a leader sends for the ticks it missed: each entry's catch-up policy.

Ticks older than the grace are "missed" (``skip``: none, ``latest``: the last one, ``all``:
up to ``max_catch_up`` of them); ticks within the grace are sent late, never dropped.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from leveret.actors.schedules import Schedule
from leveret.services.observability.logs import get_logger

log = get_logger("leveret.scheduler")


def plan(
    entry: Schedule, last: datetime | None, now: datetime, grace: timedelta
) -> tuple[list[datetime], datetime]:
    """What a new leader sends for `entry` at once, and from when it continues.

    Args:
        entry: The schedule entry.
        last: Its last tick sent, as stored (None: a new entry, or no state).
        now: The leader's clock.
        grace: Ticks this late are still sent; older ones are missed.

    Returns:
        The ticks to send at once, oldest first: the missed ones the catch-up policy
        keeps, then those within the grace period (sent late, never dropped); and the
        cursor: the regular ticks are those after it.
    """
    if last is None:
        return [], now  # a new entry (or no state): from now on
    missed: list[datetime] = []
    start = last
    if last < now - grace:
        missed, start = catch_up(entry, last, now, grace, reason="downtime")
    late: list[datetime] = []
    for tick in entry.when.after(start):
        if tick > now:
            break
        late.append(tick)
    return missed + late, max(last, now)


def catch_up(
    entry: Schedule, last: datetime, now: datetime, grace: timedelta, *, reason: str
) -> tuple[list[datetime], datetime]:
    """The missed ticks after `last` that `entry`'s catch-up policy keeps (those older
    than the grace), and the cursor the regular ticks continue from (the grace's start).
    """
    horizon = now - grace
    missed: list[datetime] = []
    if entry.catch_up != "skip":
        limit = 1 if entry.catch_up == "latest" else entry.max_catch_up
        missed = entry.when.latest(last, horizon, limit)
    log.info(
        "schedule_caught_up",
        schedule=entry.name,
        last_sent=last.isoformat(),
        policy=entry.catch_up,
        missed_sent=len(missed),
        reason=reason,
    )
    return missed, horizon
