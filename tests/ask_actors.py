"""An actor that answers asks, for `leveret worker` in a subprocess (the ask fault tests).

Each handling is recorded to ``$LEVERET_TEST_RECORD`` (`tests.records`): ``start`` with the
worker's pid before it sleeps, ``done`` after.
"""

from __future__ import annotations

import os
import time

from leveret.actors import Actor, Context, handler
from leveret.schemas import Message
from tests.records import record_event


class Question(Message, topic="tests.ask_faults.question"):
    n: int
    sleep_s: float = 0.0


class Answer(Message, topic="tests.ask_faults.answer"):
    n: int
    pid: int


class Oracle(Actor, queue="oracle"):
    time_limit_s = 60

    @handler
    def answer(self, msg: Question, ctx: Context) -> Answer:
        record_event("start", msg.n, ctx)
        if msg.sleep_s:
            time.sleep(msg.sleep_s)
        record_event("done", msg.n, ctx)
        return Answer(n=msg.n, pid=os.getpid())
