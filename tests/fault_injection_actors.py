"""Actors that inject faults into the worker's own machinery, for `leveret worker` in a
subprocess: importing this module arms two switches in that process.

- `Fault(where="io")`: once handled, the next call of the worker's outcome callback on
  its I/O thread raises, as a bug there would;
- `Fault(where="handler_loop")`: once handled, the next delivery a handler thread takes
  raises out of its loop, as a bug in the worker's own handling code would;
- `Fault(where="event_loop")`: once handled, the next delivery for an async handler raises
  out of the event loop's task, as a bug in the worker's async handling code would.

`Slow(sleep_s=...)` keeps a handler busy meanwhile. Both record to ``$LEVERET_TEST_RECORD``
like `tests.sample_actors`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from leveret.actors import NO_RETRY, Actor, AsyncContext, Context, handler
from leveret.schemas import Message
from leveret.services.rabbitmq._consumer import RabbitConsumer
from leveret.services.runtime.execution import Executor
from tests.records import record_event

_armed: set[str] = set()


class Fault(Message, topic="tests.fault.inject"):
    """Arms a fault in this worker process."""

    n: int
    where: Literal["io", "handler_loop", "event_loop"]


class Slow(Message, topic="tests.fault.slow"):
    """Keeps a handler thread busy."""

    n: int
    sleep_s: float


class AsyncPing(Message, topic="tests.fault.async_ping"):
    """For the async handler (so the worker runs an event loop)."""

    n: int


class Injector(Actor, queue="injector"):
    retry = NO_RETRY

    @handler
    def arm(self, msg: Fault, ctx: Context) -> None:
        record_event("start", msg.n, ctx)
        _armed.add(msg.where)
        record_event("done", msg.n, ctx)

    @handler
    def slow(self, msg: Slow, ctx: Context) -> None:
        record_event("start", msg.n, ctx)
        time.sleep(msg.sleep_s)
        record_event("done", msg.n, ctx)

    @handler
    async def ping(self, msg: AsyncPing, ctx: AsyncContext) -> None:
        record_event("start", msg.n, ctx)
        record_event("done", msg.n, ctx)


_settle_done = RabbitConsumer._settle_done
_run = Executor.run
_run_async = Executor.run_async


def _faulty_settle_done(self: RabbitConsumer) -> None:
    if "io" in _armed:
        _armed.discard("io")
        raise RuntimeError("fault injected into an I/O-thread callback")
    _settle_done(self)


def _faulty_run(self: Executor, delivery: Any) -> Any:
    if "handler_loop" in _armed:
        _armed.discard("handler_loop")
        raise RuntimeError("fault injected into a handler thread's loop")
    return _run(self, delivery)


async def _faulty_run_async(self: Executor, delivery: Any) -> Any:
    if "event_loop" in _armed:
        _armed.discard("event_loop")
        raise RuntimeError("fault injected into an event loop task")
    return await _run_async(self, delivery)


RabbitConsumer._settle_done = _faulty_settle_done  # type: ignore[method-assign]
Executor.run = _faulty_run  # type: ignore[method-assign]
Executor.run_async = _faulty_run_async  # type: ignore[method-assign]
