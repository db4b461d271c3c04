"""A schedule for tests that run `leveret scheduler` in subprocesses: one tick a second."""

from __future__ import annotations

from datetime import datetime

from leveret import Actor, Message, every, handler, schedule


class Second(Message, topic="tests.schedules.second"):
    at: datetime


class Seconds(Actor, queue="schedules.seconds"):
    time_limit_s = 5

    @handler
    def on(self, msg: Second) -> None: ...


every_second = schedule(
    "tests-every-second", every(seconds=1), message=lambda at: Second(at=at), to=Seconds
)
