"""Actors for tests that run `leveret worker` in a subprocess.

What a handler does is driven by the message; what it did is appended, one line per event,
to the file named by ``$LEVERET_TEST_RECORD``: ``start <n> <pid> <message_id> <time>`` before
the work and ``done <n> <pid> <message_id> <time>`` after it (lines are short, appends are
atomic; ``<time>`` is ``time.time()``).
"""

from __future__ import annotations

import os
import time

from leveret.actors import NO_RETRY, Actor, Context, handler
from leveret.schemas import Message
from tests.records import record_event


class Job(Message, topic="tests.job"):
    """A unit of work for `Jobs`."""

    n: int
    sleep_s: float = 0.0
    fail: bool = False


class Jobs(Actor, queue="jobs"):
    """Sleeps, fails or succeeds as each job says, recording start and end."""

    retry = NO_RETRY

    @handler
    def run(self, msg: Job, ctx: Context) -> None:
        record_event("start", msg.n, ctx)
        if msg.sleep_s:
            time.sleep(msg.sleep_s)
        if msg.fail:
            raise RuntimeError(f"job {msg.n} failed on purpose")
        record_event("done", msg.n, ctx)


class Crash(Message, topic="tests.crash"):
    """A message for `Crasher`: kills the worker process that handles it, unless told not to."""

    n: int
    crash: bool = True


CRASH_EXIT_CODE = 7  # not one of the exit codes the worker itself uses (0-3)


class Crasher(Actor, queue="crasher", delivery_limit=3):
    """A poison-message handler: exits its worker process at once (as a segfault in a C
    extension or the OOM killer would), recording ``start`` first."""

    retry = NO_RETRY

    @handler
    def run(self, msg: Crash, ctx: Context) -> None:
        record_event("start", msg.n, ctx)
        if msg.crash:
            os._exit(CRASH_EXIT_CODE)
        record_event("done", msg.n, ctx)


def read_record(path: str) -> list[tuple[str, int, int, str]]:
    """The events recorded so far: (event, n, pid, message_id)."""
    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        event, n, pid, message_id, _time = line.split()
        events.append((event, int(n), int(pid), message_id))
    return events


def record_times(path: str, event: str, n: int) -> list[float]:
    """When each recorded `event` of job `n` happened (``time.time()``), in order."""
    with open(path) as file:
        lines = [line.split() for line in file.read().splitlines()]
    return [float(at) for kind, num, _pid, _id, at in lines if kind == event and int(num) == n]
