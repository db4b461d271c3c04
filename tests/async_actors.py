"""An async actor for fault tests' worker subprocesses: ``leveret worker tests.async_actors``."""

from __future__ import annotations

import asyncio
import os
import time

from leveret.actors import NO_RETRY, Actor, AsyncContext, handler
from leveret.schemas import Message


class AsyncJob(Message, topic="tests.async_job"):
    """A unit of work for `AsyncJobs`: waits `sleep_s` on the event loop."""

    n: int
    sleep_s: float = 0.0


def _record(event: str, n: int, ctx: AsyncContext) -> None:
    path = os.environ.get("LEVERET_TEST_RECORD")
    if not path:
        return
    line = f"{event} {n} {os.getpid()} {ctx.message_id} {time.time():.3f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class AsyncJobs(Actor, queue="async_jobs"):
    """Awaits as each job says, recording start and end (the same lines as `Jobs`)."""

    retry = NO_RETRY

    @handler
    async def run(self, msg: AsyncJob, ctx: AsyncContext) -> None:
        _record("start", msg.n, ctx)
        await asyncio.sleep(msg.sleep_s)
        _record("done", msg.n, ctx)
