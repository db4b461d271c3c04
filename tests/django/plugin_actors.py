"""Actors of the pytest-plugin tests: they record what they handle, no database needed."""

from __future__ import annotations

from typing import ClassVar

from leveret import Actor, Message, RetryPolicy, handler


class Note(Message, topic="tests.plugin.note"):
    n: int


class Complaint(Message, topic="tests.plugin.complaint"):
    text: str


class Tally(Actor, queue="plugin.tally"):
    """Records every note it handles."""

    time_limit_s = 10
    seen: ClassVar[list[int]] = []

    @handler
    def on(self, msg: Note) -> None:
        Tally.seen.append(msg.n)


class Grumpy(Actor, queue="plugin.grumpy"):
    """Fails every complaint: retried once, then dead-lettered."""

    time_limit_s = 10
    retry = RetryPolicy(attempts=2)

    @handler
    def on(self, msg: Complaint) -> None:
        raise RuntimeError(f"no: {msg.text}")


class Doubled(Message, topic="tests.plugin.doubled"):
    n: int


class Doubler(Actor, queue="plugin.doubler"):
    """Answers asks: the note's number, doubled."""

    time_limit_s = 10

    @handler
    def on(self, msg: Note) -> Doubled:
        return Doubled(n=msg.n * 2)
