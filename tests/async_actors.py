"""An async actor for fault tests' worker subprocesses: ``leveret worker tests.async_actors``."""

from __future__ import annotations

import asyncio

from leveret.actors import NO_RETRY, Actor, AsyncContext, handler
from leveret.schemas import Message
from tests.records import record_event


class AsyncJob(Message, topic="tests.async_job"):
    """A unit of work for `AsyncJobs`: waits `sleep_s` on the event loop."""

    n: int
    sleep_s: float = 0.0


class AsyncJobs(Actor, queue="async_jobs"):
    """Awaits as each job says, recording start and end (the same lines as `Jobs`)."""

    retry = NO_RETRY

    @handler
    async def run(self, msg: AsyncJob, ctx: AsyncContext) -> None:
        record_event("start", msg.n, ctx)
        await asyncio.sleep(msg.sleep_s)
        record_event("done", msg.n, ctx)
