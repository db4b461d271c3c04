"""The worker's event loop: where ``async def`` handlers run, `concurrency` at once.

A worker whose actors have async handlers starts one `EventLoop`: an asyncio loop in a
thread of its own. The consumer's thread hands it the deliveries for async handlers
(`submit`); each runs as a task, at most `concurrency` at a time, the others waiting in
arrival order. Sync handlers keep running on the handler threads, beside it.

The loop never runs Leveret's broker I/O (the consumer and the publisher keep their own
threads): what it runs is the handlers, so an async handler that blocks (``time.sleep``,
a synchronous HTTP call) stalls every other async handler, and its time limit can only
cancel it once it awaits again. Blocking work belongs in ``await asyncio.to_thread(...)``.
A watcher thread says so: when the loop has not turned for `BLOCKED_AFTER_S`, it logs
``event_loop_blocked`` once, with the stack of the code holding the loop; past
`UNHEALTHY_AFTER_S` it logs ``event_loop_stuck`` and the worker's health turns red until
the loop turns again (`stalled_s`), so that an orchestrator restarts a worker stuck for good.

No fault ends the loop unseen: an exception escaping a task (a bug of Leveret's, never a
handler's own exception: those are outcomes) or the loop itself is logged and reported
through `on_fault`, which stops the worker with `EXIT_INTERNAL_ERROR`.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from leveret.services.observability.logs import get_logger
from leveret.services.runtime.consumer import Job

T = TypeVar("T")

log = get_logger("leveret.worker")

DEFAULT_CONCURRENCY = 200
"""Async handlers running at once per worker process by default (``--concurrency``)."""

CANCEL_GRACE_S = 2.0
"""After shutdown cut them off, how long cancelled handlers get to run their cleanup."""

BLOCKED_AFTER_S = 1.0
"""How long the loop may go without turning before ``event_loop_blocked`` is logged."""
UNHEALTHY_AFTER_S = 10.0
"""How long the loop may go without turning before the worker's health turns red (and
``event_loop_stuck`` is logged): every async handler has waited that long."""
_TURN_S = 0.25
"""How often the loop marks that it turns, and the watcher looks."""


class EventLoop:
    """An asyncio loop in its own thread, running jobs `concurrency` at a time.

    Args:
        concurrency: Jobs running at once; more wait, in arrival order.
        run_job: Runs one job to its end (handles and settles it); must not raise.
        on_fault: Called (from the loop's thread) with a reason when the loop cannot go on.
    """

    def __init__(
        self,
        concurrency: int,
        run_job: Callable[[Job], Coroutine[Any, Any, None]],
        on_fault: Callable[[str], None],
    ) -> None:
        self.concurrency = concurrency
        self._run_job = run_job
        self._on_fault = on_fault
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._waiting: deque[Job] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = threading.Event()
        self.blocked_after_s = BLOCKED_AFTER_S
        """Read at each look: how long the loop may stall before it is reported."""
        self.unhealthy_after_s = UNHEALTHY_AFTER_S
        """How long the loop may stall before the worker is unhealthy (`stalled_s`)."""
        self._turned = 0.0  # time.monotonic() of the loop's last mark
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()

    # Any thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop's thread; returns once the loop runs."""
        self._thread = threading.Thread(target=self._main, name="leveret-event-loop", daemon=True)
        self._thread.start()
        self._started.wait()
        self._watcher = threading.Thread(
            target=self._watch, name="leveret-event-loop-watch", daemon=True
        )
        self._watcher.start()

    def alive(self) -> bool:
        """Whether the loop's thread runs (health)."""
        return self._thread is not None and self._thread.is_alive()

    def stalled_s(self) -> float:
        """Seconds since the loop last marked a turn (it marks one every 0.25 s while it
        turns); 0 once it stopped or before it started."""
        if not self.alive() or self._stopping.is_set():
            return 0.0
        return time.monotonic() - self._turned

    @property
    def running(self) -> int:
        """Jobs running now."""
        return len(self._tasks)

    def submit(self, job: Job) -> None:
        """Run `job` as soon as fewer than `concurrency` run (from the consumer's thread).

        Raises:
            RuntimeError: The loop is no longer running.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError("the event loop was not started")
        loop.call_soon_threadsafe(self._accept, job)

    def take_waiting(self, timeout_s: float = 5.0) -> list[Job]:
        """Remove and return the jobs not started yet (shutdown gives them back)."""
        loop = self._loop
        if loop is None or not self.alive():
            waiting = list(self._waiting)
            self._waiting.clear()
            return waiting
        taken: Future[list[Job]] = Future()

        def take() -> None:
            waiting = list(self._waiting)
            self._waiting.clear()
            taken.set_result(waiting)

        loop.call_soon_threadsafe(take)
        try:
            return taken.result(timeout_s)
        except FutureTimeout:  # a handler blocks the loop: its jobs stay unacked
            log.warning(
                "event_loop_unresponsive",
                waited_s=timeout_s,
                hint="an async handler blocks the event loop (time.sleep, a synchronous "
                "client?); the jobs waiting for it are redelivered when the worker closes",
            )
            return []

    def stop(self, timeout_s: float = CANCEL_GRACE_S + 1) -> None:
        """Stop the loop: tasks still running (cut off by shutdown) are cancelled."""
        self._stopping.set()
        loop = self._loop
        if loop is None or self._thread is None:
            return
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # already closed
            return
        self._thread.join(timeout_s)

    # The loop's thread, from its start ---------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._turn()
        self._started.set()
        try:
            loop.run_forever()
            self._cancel_remaining(loop)
        except BaseException as exc:  # the loop itself failed: say so, stop
            log.exception("event_loop_crashed")
            self._on_fault(f"the event loop failed: {type(exc).__name__}: {exc}")
        finally:
            try:
                loop.close()
            except Exception:  # closing a broken loop: nothing more to do
                log.exception("event_loop_close_failed")

    def _turn(self) -> None:
        self._turned = time.monotonic()
        loop = self._loop
        if loop is not None and not self._stopping.is_set():
            loop.call_later(_TURN_S, self._turn)

    def _cancel_remaining(self, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting.clear()  # shutdown gave them back already
        tasks = list(self._tasks)
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.wait(tasks, timeout=CANCEL_GRACE_S))

    # The watcher's thread ---------------------------------------------------------------

    def _watch(self) -> None:
        """Log ``event_loop_blocked`` once per stall: a handler holds the loop."""
        reported = stuck = False
        try:
            while not self._stopping.wait(_TURN_S):
                stalled_s = self.stalled_s()
                if stalled_s <= self.blocked_after_s:
                    reported = stuck = False
                    continue
                if stalled_s > self.unhealthy_after_s and not stuck:
                    stuck = True
                    log.error(
                        "event_loop_stuck",
                        stalled_s=round(stalled_s, 2),
                        running=len(self._tasks),
                        where=self._where(),
                        hint="the worker reports itself unhealthy until the loop turns again",
                    )
                if not reported:
                    reported = True
                    log.warning(
                        "event_loop_blocked",
                        stalled_s=round(stalled_s, 2),
                        running=len(self._tasks),
                        where=self._where(),
                        hint="an async def handler blocks (time.sleep, a synchronous client, "
                        "long CPU work): every other async handler waits, and its time limit "
                        "cannot cancel it; run blocking code with await asyncio.to_thread(...)",
                    )
        except Exception:  # the watcher only reports: it never takes the worker down
            log.exception("event_loop_watch_failed")

    def _where(self) -> str:
        """The innermost frames of the loop's thread (the code holding it), as text."""
        thread = self._thread
        frame = sys._current_frames().get(thread.ident) if thread and thread.ident else None
        if frame is None:
            return ""
        return "".join(traceback.format_stack(frame, limit=6))[-3000:]

    # The loop's thread ------------------------------------------------------------------

    def _accept(self, job: Job) -> None:
        self._waiting.append(job)
        self._pump()

    def _pump(self) -> None:
        loop = self._loop
        assert loop is not None
        while self._waiting and len(self._tasks) < self.concurrency:
            job = self._waiting.popleft()
            task = loop.create_task(self._run_job(job))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            error = task.exception()
            if error is not None:  # run_job never raises: this is a fault of Leveret's
                log.error(
                    "event_loop_task_failed",
                    error=f"{type(error).__name__}: {error}",
                    exc_info=error,
                )
                self._on_fault(f"an event loop task failed: {type(error).__name__}: {error}")
        self._pump()


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end from synchronous code, on an event loop of its own.

    In a thread without a running loop that is `asyncio.run`; in one with a loop running
    (an async test calling `MemoryBroker.join`) a helper thread runs it, since a loop
    cannot be entered twice. The caller's context variables go along either way.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result: list[T] = []
    errors: list[BaseException] = []
    context = contextvars.copy_context()

    def run() -> None:
        try:
            result.append(context.run(asyncio.run, coroutine))
        except BaseException as exc:  # noqa: BLE001  # handed to the caller below
            errors.append(exc)

    helper = threading.Thread(target=run, name="leveret-join-async", daemon=True)
    helper.start()
    helper.join()
    if errors:
        raise errors[0]
    return result[0]
