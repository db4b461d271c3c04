"""The scheduler tests' shared entry and clock: a beat every ten seconds, and a clock that
moves only when the test says so (the time is never waited for)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from leveret import Actor, Message, every, handler, schedule
from leveret.actors.schedules import CatchUp, Schedule

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


class Beat(Message, topic="tests.scheduler.beat"):
    """One tick: `n` is its time, in seconds since the epoch."""

    n: int


class Beats(Actor, queue="tests.scheduler.beats"):
    """Where the ticks go; the tests read its queue, nothing handles it."""

    time_limit_s = 5

    @handler
    def on(self, msg: Beat) -> None: ...


def beat_schedule(
    name: str = "tests-beats", *, catch_up: CatchUp = "skip", limit: int = 100
) -> Schedule:
    """An entry `name` sending a `Beat` to `Beats` every ten seconds."""
    return schedule(
        name,
        every(seconds=10),
        message=lambda at: Beat(n=int(at.timestamp())),
        to=Beats,
        catch_up=catch_up,
        max_catch_up=limit,
    )


class Clock:
    """The test's clock: time moves when the test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
