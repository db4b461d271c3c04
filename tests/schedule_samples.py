"""A schedule for tests that run `leveret scheduler` in subprocesses: one tick a second."""

from __future__ import annotations

from leveret import Actor, every, handler, schedule
from tests.beats import Beat


class Seconds(Actor, queue="schedules.seconds"):
    time_limit_s = 5

    @handler
    def on(self, msg: Beat) -> None: ...


every_second = schedule(
    "tests-every-second",
    every(seconds=1),
    message=lambda at: Beat(n=int(at.timestamp())),
    to=Seconds,
)
