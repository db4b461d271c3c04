"""The worker runtime: handler threads over a `Consumer`, whatever the broker.

One `Worker` runs the actors of one process. Its consumer hands it deliveries; its
`threads` handler threads run them through each actor's `Executor` (decode, handler, time
limit, retry policy) and hand the outcome back to the consumer to settle. Deliveries for
``async def`` handlers go to the worker's `EventLoop` instead, `concurrency` at once.
Shutdown (SIGTERM, SIGINT, `shutdown`) stops consuming, gives back the deliveries not
started, lets the handlers in flight finish within `shutdown_timeout_s`, waits for their
outcomes to be settled, and closes.

No fault ends a thread unseen. An exception escaping a handler thread's loop (a bug, never
a handler's own exception: those are outcomes) or the consumer's own thread is logged with
its traceback; the worker turns unhealthy, stops consuming, lets the other handlers finish
and stops with `EXIT_INTERNAL_ERROR`, so that a supervisor, Docker or systemd restarts it.
The delivery in hand goes back as a failed delivery (counted towards the delivery limit).
"""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from leveret.actors.actor import Actor
from leveret.services.delivery import Outcome
from leveret.services.middleware import MiddlewareChain
from leveret.services.observability.logs import get_logger
from leveret.services.runtime.consumer import Consumer, Job
from leveret.services.runtime.eventloop import DEFAULT_CONCURRENCY, EventLoop
from leveret.services.runtime.execution import DEFAULT_MAX_BODY_BYTES, Executor
from leveret.services.runtime.stats import Stats
from leveret.services.topology import naming

log = get_logger("leveret.worker")

EXIT_OK = 0
EXIT_SHUTDOWN_TIMEOUT = 1
"""Handlers were cut off at the shutdown timeout (their messages are redelivered)."""
EXIT_FATAL = 2
"""A configuration or topology error that a restart cannot fix: supervisors do not restart."""
EXIT_INTERNAL_ERROR = 3
"""An internal fault stopped the worker (a thread could not go on): restart it."""


class Worker:
    """Consumes the queues of `actors` through `consumer` until shut down.

    Built by `Broker.worker`; not started.

    Args:
        consumer: The broker's consumer of the actors' queues.
        actors: Actor classes to run, one instance each.
        namespace: The namespace of their queues.
        threads: Handler threads (sync handlers running at once).
        concurrency: Async handlers running at once on the worker's event loop (started
            only when an actor has an ``async def`` handler).
        prefetch: Deliveries the consumer holds unacknowledged (for the log line).
        shutdown_timeout_s: How long shutdown waits for handlers in flight.
        max_body_bytes: Larger bodies are dead-lettered unread (reason ``too_large``).
        middleware: The broker's `MiddlewareChain`: its handling hooks run around each
            message, ``after_settle`` once it is handed back to the consumer, and
            ``worker_started`` / ``worker_stopping`` / ``worker_stopped`` at `start` and
            at the end of shutdown.

    Attributes:
        stats: Counters of handled, retried and dead-lettered messages.
        consuming: Set while deliveries flow (the consumer's).
        exit_code: 0 while all is well; see `shutdown`.
        fatal_error: Why the worker stopped on its own, if it did.
    """

    def __init__(
        self,
        consumer: Consumer,
        actors: Sequence[type[Actor]],
        *,
        namespace: str,
        threads: int = 8,
        concurrency: int = DEFAULT_CONCURRENCY,
        prefetch: int = 16,
        shutdown_timeout_s: float = 30.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        middleware: MiddlewareChain | None = None,
    ) -> None:
        self.consumer = consumer
        self.namespace = namespace
        self.middleware = middleware if middleware is not None else MiddlewareChain()
        self.threads = threads
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stats = Stats()
        self.consuming = consumer.consuming
        self.exit_code = EXIT_OK
        self.fatal_error: str | None = None
        self.executors = {
            naming.queue_name(namespace, actor.queue): Executor(
                actor,
                max_body_bytes=max_body_bytes,
                namespace=namespace,
                middleware=self.middleware,
                clock=consumer.now,
            )
            for actor in actors
        }
        self.event_loop: EventLoop | None = None
        """Runs the async handlers; None when no actor has one."""
        if any(handler.is_async for actor in actors for handler in actor.handlers.values()):
            self.event_loop = EventLoop(concurrency, self._handle_async_job, self.fail)
        self._work: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._accepting = True
        self._running = 0  # handlers running now
        self._running_lock = threading.Lock()
        self._stop = threading.Event()  # shutdown requested
        self._stopped = threading.Event()  # shutdown done
        self._pool: list[threading.Thread] = []
        self._stopper: threading.Thread | None = None
        self.restart_requested = False
        """A SIGHUP asked for a restart with new code (`run` with `restart_on_sighup`)."""

    # Any thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the handler threads and the consumer; returns at once.

        The middleware's ``worker_started`` runs here, before the consumer starts: before
        any delivery is handled.
        """
        for number in range(self.threads):
            thread = threading.Thread(
                target=self._handle_jobs, name=f"leveret-handler-{number}", daemon=True
            )
            thread.start()
            self._pool.append(thread)
        self._stopper = threading.Thread(
            target=self._wait_and_stop, name="leveret-stop", daemon=True
        )
        self._stopper.start()
        if self.event_loop is not None:
            self.event_loop.start()
        self.middleware.worker_started(self)
        self.consumer.start(self._dispatch, self._fail)

    def threads_alive(self) -> bool:
        """Whether the consumer's thread and every handler thread are alive (health)."""
        started = bool(self._pool)
        return (
            started
            and self.consumer.alive()
            and all(thread.is_alive() for thread in self._pool)
            and (self.event_loop is None or self.event_loop.alive())
            and not self._stopped.is_set()
        )

    @property
    def stopped(self) -> bool:
        """Whether the worker has stopped (shut down, or stopped by itself on a failure)."""
        return self._stopped.is_set()

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown without waiting (safe from a signal handler)."""
        self._stop.set()

    def shutdown(self, timeout_s: float | None = None) -> int:
        """Shut down gracefully and wait for it.

        Stops consuming, gives back deliveries not started, lets handlers in flight finish
        (up to `shutdown_timeout_s`), settles them, and closes the consumer.

        Returns:
            0 when every handler finished in time, 1 when some were cut off (their messages
            are redelivered), 2 after a fatal error, 3 after an internal fault.
        """
        self.request_shutdown()
        if self._stopper is None:  # never started
            self._stopped.set()
        self._stopped.wait(timeout_s if timeout_s is not None else self.shutdown_timeout_s + 10)
        return self.exit_code

    def run(self, *, restart_on_sighup: bool = False) -> int:
        """Consume until SIGTERM or SIGINT, then shut down gracefully.

        Signal handlers are installed only on the main thread (and restored afterwards); a
        second SIGTERM or SIGINT while shutting down exits at once (the broker redelivers
        what was in flight).

        Args:
            restart_on_sighup: SIGHUP shuts down gracefully too and sets
                `restart_requested`, for the caller to start again with new code (the
                command line re-executes itself). Otherwise SIGHUP keeps its default.

        Returns:
            The exit code, as `shutdown`.
        """
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            signals = [signal.SIGTERM, signal.SIGINT]
            if restart_on_sighup:
                signals.append(signal.SIGHUP)
            for signum in signals:
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self.start()
            while not self._stopped.wait(0.5):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.exit_code

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if not self._stop.is_set():
                log.info("worker_restarting", signal=name, hint="new code after the drain")
                self.restart_requested = True
                self.request_shutdown()
            return
        if self._stop.is_set() and self.restart_requested:
            log.info("worker_stopping", signal=name, hint="draining: no restart afterwards")
            self.restart_requested = False
            return
        if self._stop.is_set():
            log.warning("worker_killed", signal=name)
            raise SystemExit(EXIT_SHUTDOWN_TIMEOUT)
        log.info("worker_stopping", signal=name)
        self.request_shutdown()

    # Handler threads --------------------------------------------------------------------

    def _handle_jobs(self) -> None:
        work = self._work
        while True:
            job = work.get()
            if job is None:
                return
            if not self._takes(job):
                continue
            try:
                self.handle(job)
            except BaseException as exc:  # noqa: BLE001  # a fault of ours: stop, loudly
                self._handler_thread_failed(job, exc)
                return

    def _takes(self, job: Job) -> bool:
        """Whether to handle `job` now: not when its channel is gone (the broker redelivers
        it), nor once the worker stops accepting work (it is given back, not failed)."""
        if not self.consumer.current(job):
            return False
        if not self._accepting:
            self.consumer.give_back(job, failed=False)
            return False
        return True

    def _dispatch(self, job: Job) -> None:
        """Hand a delivery to the event loop (async handler) or the handler threads."""
        event_loop = self.event_loop
        if event_loop is not None and self.executors[job.queue].is_async(job.delivery):
            try:
                event_loop.submit(job)
            except RuntimeError:  # the loop closed: shutdown is over, the broker redelivers
                self.consumer.give_back(job, failed=False)
        else:
            self._work.put(job)

    def handle(self, job: Job) -> Outcome:
        """Run one job's handler, count its outcome and have the consumer settle it.

        The one place a delivery is handled in a thread, by the handler threads and by
        `MemoryBroker.join` alike (which runs an async handler on a loop of its own).
        """
        executor = self.executors[job.queue]
        self._begin()
        started = time.perf_counter()
        try:
            outcome = executor.run(job.delivery)
            self.stats.count(outcome)
        finally:
            with self._running_lock:
                self._running -= 1
        self._finish(job, executor.name, outcome, started)
        return outcome

    async def _handle_async_job(self, job: Job) -> None:
        """What the event loop runs for each job: `handle`, awaiting an async handler."""
        if not self._takes(job):
            return
        try:
            executor = self.executors[job.queue]
            self._begin()
            started = time.perf_counter()
            try:
                outcome = await executor.run_async(job.delivery)
                self.stats.count(outcome)
            finally:
                with self._running_lock:
                    self._running -= 1
            self._finish(job, executor.name, outcome, started)
        except asyncio.CancelledError:
            raise  # cut off at the end of shutdown: unsettled, so the broker redelivers it
        except BaseException as exc:  # noqa: BLE001  # a fault of ours: stop, loudly
            self._handler_thread_failed(job, exc)

    def _begin(self) -> None:
        with self._running_lock:
            self._running += 1

    def _finish(self, job: Job, actor: str, outcome: Outcome, started: float) -> None:
        job.handled_s = time.perf_counter() - started
        try:
            self.consumer.settle(job, outcome)
        except BaseException as exc:
            self.middleware.after_settle(actor, outcome, exc)
            raise
        self.middleware.after_settle(actor, outcome, None)

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return self._running

    def _handler_thread_failed(self, job: Job, error: BaseException) -> None:
        log.error(
            "handler_thread_failed",
            message_id=job.delivery.message_id,
            error=f"{type(error).__name__}: {error}",
            exc_info=error,
        )
        self.consumer.give_back(job, failed=True)
        self._fail(f"a handler thread failed: {type(error).__name__}: {error}", EXIT_INTERNAL_ERROR)

    def fail(self, reason: str) -> None:
        """Stop because a companion of this worker (its scheduler thread) cannot go on:
        unhealthy at once, then exit with `EXIT_INTERNAL_ERROR` after the handlers in
        flight finish."""
        self._fail(reason, EXIT_INTERNAL_ERROR)

    def _fail(self, reason: str, exit_code: int) -> None:
        """Stop because the worker cannot go on: unhealthy at once, exit with `exit_code`."""
        if self.fatal_error is None:
            self.fatal_error = reason
        self.exit_code = max(self.exit_code, exit_code)
        log.error("worker_failed", error=reason, exit_code=exit_code)
        self.request_shutdown()

    # Shutdown (its own thread) ----------------------------------------------------------

    def _wait_and_stop(self) -> None:
        self._stop.wait()
        try:
            self._shut_down()
        except Exception as exc:  # stopping must end, whatever happens
            log.exception("worker_shutdown_failed")
            self.exit_code = max(self.exit_code, EXIT_INTERNAL_ERROR)
            if self.fatal_error is None:
                self.fatal_error = f"shutting down failed: {type(exc).__name__}: {exc}"
        finally:
            self.middleware.worker_stopped(self)
            self._stopped.set()

    def _shut_down(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout_s
        self._accepting = False
        self.consumer.stop_consuming()
        requeued = 0
        while True:
            try:
                job = self._work.get_nowait()
            except queue.Empty:
                break
            if job is not None and self.consumer.current(job):
                self.consumer.give_back(job, failed=False)
                requeued += 1
        if self.event_loop is not None:
            for job in self.event_loop.take_waiting():
                if self.consumer.current(job):
                    self.consumer.give_back(job, failed=False)
                    requeued += 1
        log.info(
            "worker_draining",
            running=self._running,
            requeued=requeued,
            **self.consumer.log_fields(),
        )
        # Handlers still running finish (also while disconnected: their acks are lost, but
        # nothing is cut off half way), then their outcomes are settled.
        while self._running and time.monotonic() < deadline:
            time.sleep(0.02)
        settled = not self._running and self.consumer.wait_settled(
            max(0.0, deadline - time.monotonic())
        )
        if not settled:
            log.warning(
                "worker_shutdown_timeout",
                running=self._running,
                timeout_s=self.shutdown_timeout_s,
                hint="handlers still running are cut off; the broker redelivers their messages",
            )
            self.exit_code = max(self.exit_code, EXIT_SHUTDOWN_TIMEOUT)
        for _ in self._pool:
            self._work.put(None)
        if self.event_loop is not None:
            self.event_loop.stop()
        # Every delivery is settled or given back; the connection is still open (the last
        # heartbeat goes out on it).
        self.middleware.worker_stopping(self)
        self.consumer.close()
        log.info(
            "worker_stopped", handled=self.stats.handled, dead_lettered=self.stats.dead_lettered
        )
