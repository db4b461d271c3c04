"""Actors for tests that run `leveret worker` in a subprocess.

What a handler does is driven by the message; what it did is appended, one line per event,
to the file named by ``$LEVERET_TEST_RECORD``: ``start <n> <pid> <message_id>`` before the
work and ``done <n> <pid> <message_id>`` after it (lines are short, appends are atomic).
"""

from __future__ import annotations

import os
import time

from actors import NO_RETRY, Actor, Context, handler
from schemas import Message


class Job(Message, topic="tests.job"):
    """A unit of work for `Jobs`."""

    n: int
    sleep_s: float = 0.0
    fail: bool = False


def _record(event: str, n: int, ctx: Context) -> None:
    path = os.environ.get("LEVERET_TEST_RECORD")
    if not path:
        return
    line = f"{event} {n} {os.getpid()} {ctx.message_id}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class Jobs(Actor, queue="jobs"):
    """Sleeps, fails or succeeds as each job says, recording start and end."""

    retry = NO_RETRY

    @handler
    def run(self, msg: Job, ctx: Context) -> None:
        _record("start", msg.n, ctx)
        if msg.sleep_s:
            time.sleep(msg.sleep_s)
        if msg.fail:
            raise RuntimeError(f"job {msg.n} failed on purpose")
        _record("done", msg.n, ctx)


def read_record(path: str) -> list[tuple[str, int, int, str]]:
    """The events recorded so far: (event, n, pid, message_id)."""
    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        event, n, pid, message_id = line.split()
        events.append((event, int(n), int(pid), message_id))
    return events
