"""The scheduler's state: the last tick sent of each entry, as the broker stores it.

The stored state is untrusted (any client may write it, a clock that ran ahead may have):
`trusted` is what a new leader continues from, `bounded` what it stores.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from leveret.services.observability.logs import get_logger

log = get_logger("leveret.scheduler")

MAX_STATE_ENTRIES = 10_000
"""The most entries a stored state holds (the reader keeps no more, the leader saves no
more: its own entries first)."""
FUTURE_TOLERANCE_S = 5.0
"""How far ahead of the leader's clock a stored tick (or an entry's last tick, after the
clock stepped back) is still trusted: clocks a few seconds apart change nothing; beyond,
the entry resumes from now, so that a bad clock on one host cannot silence the others."""


def trusted(
    stored: dict[str, datetime], now: datetime, entries: Collection[str]
) -> dict[str, datetime]:
    """The stored state as a leader running `entries` continues from it: in UTC, and no
    tick more than `FUTURE_TOLERANCE_S` ahead of its clock (such an entry resumes from now;
    one that is not among `entries` is forgotten)."""
    tolerance = timedelta(seconds=FUTURE_TOLERANCE_S)
    result: dict[str, datetime] = {}
    unreadable = forgotten = 0
    for name, tick in stored.items():
        try:
            if tick.utcoffset() is None:
                raise ValueError("a naive time")
            tick = tick.astimezone(UTC)
        except (OverflowError, ValueError):  # out of datetime's range in UTC
            unreadable += 1
            continue
        if tick > now + tolerance:
            if name not in entries:
                forgotten += 1
                continue
            log.warning(
                "schedule_state_in_future",
                schedule=name,
                stored=tick.isoformat(),
                now=now.isoformat(),
                ahead_s=round((tick - now).total_seconds(), 3),
                tolerance_s=FUTURE_TOLERANCE_S,
                hint="stored by a leader whose clock ran ahead (or by another client): "
                "not trusted, the entry resumes from now",
            )
            tick = now
        result[name] = tick
    if unreadable or forgotten:
        log.warning(
            "scheduler_state_ignored",
            unreadable=unreadable,
            in_future=forgotten,
            hint="ticks of no entry of this scheduler, unreadable or in the future: forgotten",
        )
    return result


def bounded(state: dict[str, datetime], entries: Collection[str]) -> dict[str, datetime]:
    """The state to store: at most `MAX_STATE_ENTRIES` entries, those among `entries` (the
    leader's own) first, then the most recent ticks of the others (entries removed, or run
    by schedulers with other modules). `state` itself when it is within the bound."""
    if len(state) <= MAX_STATE_ENTRIES:
        return state
    own = {name: tick for name, tick in state.items() if name in entries}
    others = sorted(
        ((tick, name) for name, tick in state.items() if name not in own),
        reverse=True,
    )
    kept = others[: max(0, MAX_STATE_ENTRIES - len(own))]
    log.warning(
        "scheduler_state_pruned",
        dropped=len(others) - len(kept),
        hint=f"at most {MAX_STATE_ENTRIES} entries are stored: the oldest ticks of "
        "entries this scheduler does not run are forgotten",
    )
    return {**own, **{name: tick for tick, name in kept}}
