"""The RabbitMQ worker: consumes actor queues, runs handlers on a thread pool, acks late.

The I/O thread owns the connection and never runs user code. Deliveries go to a queue that
`threads` handler threads take from; each finished handler posts its outcome back, and the
I/O thread acks (or first publishes the retry or dead letter with confirm, then acks). An
outcome for a delivery whose channel has since died is dropped with a log line: the broker
redelivers it.

No fault ends a thread unseen. An exception that escapes the I/O loop or a handler
thread's loop (a bug, never a handler's own exception: those are outcomes) is logged with
its traceback; the worker turns unhealthy, stops consuming, lets the other handlers in
flight finish, and exits with `EXIT_INTERNAL_ERROR`, so that a supervisor, Docker or
systemd restarts it. The delivery in hand is returned to the broker as a failed delivery
(counted towards the queue's delivery limit).
"""

from __future__ import annotations

import functools
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import pika
import pika.exceptions
from pika.channel import Channel
from pika.spec import Basic

from actors.actor import Actor
from services import delays, naming, topology, wire
from services.broker import default_prefetch, run_until_stopped
from services.connection import IOThread, describe
from services.execution import (
    DEFAULT_MAX_BODY_BYTES,
    Delivery,
    Executor,
    MessageHooks,
    Outcome,
    Stats,
)
from services.logs import get_logger

log = get_logger("leveret.worker")

REQUEUE = "requeue"
"""Give a delivery back untouched (not started): ``basic.nack`` with requeue."""
REJECT = "reject"
"""Give a delivery back as a failed delivery: ``basic.reject`` with requeue, which
RabbitMQ 4.3+ counts towards the delivery limit (``basic.nack`` no longer does)."""

EXIT_OK = 0
EXIT_SHUTDOWN_TIMEOUT = 1
EXIT_FATAL = 2
"""A configuration or topology error that a restart cannot fix: supervisors do not restart."""
EXIT_INTERNAL_ERROR = 3
"""An internal fault stopped the worker (a thread could not go on): restart it."""


@dataclass(slots=True)
class _Job:
    generation: int
    delivery_tag: int
    executor: Executor
    delivery: Delivery


class RabbitWorker(IOThread):
    """Consumes the queues of `actors` until shut down.

    Args:
        url: AMQP URL.
        namespace: The namespace of the queues.
        actors: Actor classes to run, one instance each.
        threads: Handler threads (handlers running at once).
        prefetch: Unacknowledged deliveries held; defaults to twice `threads`.
        shutdown_timeout_s: How long shutdown waits for handlers in flight.
        hooks: Run around each message in its handler thread (see `MessageHooks`).
        max_body_bytes: Larger bodies are dead-lettered unread (reason ``too_large``).
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        actors: list[type[Actor]],
        *,
        threads: int = 8,
        prefetch: int | None = None,
        shutdown_timeout_s: float = 30.0,
        hooks: Sequence[MessageHooks] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        super().__init__(url, role="worker")
        self.namespace = namespace
        self.actors = actors
        self.threads = threads
        self.prefetch = default_prefetch(threads, prefetch)
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stats = Stats()
        self.consuming = threading.Event()
        self.exit_code = EXIT_OK
        self.fatal_error: str | None = None
        self._executors = {
            naming.queue_name(namespace, actor.queue): Executor(
                actor, hooks=hooks, max_body_bytes=max_body_bytes
            )
            for actor in actors
        }
        self._steps = topology.steps(namespace, actors)
        self._work: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: deque[tuple[_Job, Outcome | str]] = deque()
        self._wake_pending = False
        self._generation = 0
        self._channel: Channel | None = None
        self._consumers: dict[str, Executor] = {}  # every tag of this channel, cancelled too
        self._active: set[str] = set()  # tags consuming now
        self._accepting = False
        self._declaring = False
        self._outstanding = 0
        self._shutting_down = False
        self._publish_tag = 0
        self._republishing: dict[int, _Job] = {}
        self._returned: set[int] = set()
        self._pool: list[threading.Thread] = []
        self._running = 0  # handlers running now, whatever their channel
        self._running_lock = threading.Lock()

    # Any thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the handler threads and the I/O thread; returns at once."""
        for number in range(self.threads):
            thread = threading.Thread(
                target=self._handle_jobs, name=f"leveret-handler-{number}", daemon=True
            )
            thread.start()
            self._pool.append(thread)
        super().start()

    def threads_alive(self) -> bool:
        """Whether the I/O thread and every handler thread are alive (health checks)."""
        return self.running and all(thread.is_alive() for thread in self._pool)

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown without waiting (safe from a signal handler)."""
        if self.running:
            self.call_soon(self._begin_shutdown)

    def shutdown(self, timeout_s: float | None = None) -> int:
        """Shut down gracefully and wait for it.

        Stops consuming, requeues deliveries not started, lets handlers in flight finish
        (up to `shutdown_timeout_s`), acks them, and closes the connection.

        Returns:
            0 when every handler finished in time, 1 when some were cut off (their messages
            are redelivered), 2 after a fatal error, 3 after an internal fault.
        """
        self.request_shutdown()
        self._stopped.wait(timeout_s if timeout_s is not None else self.shutdown_timeout_s + 10)
        return self.exit_code

    def run(self) -> int:
        """Consume until SIGTERM or SIGINT, then shut down gracefully.

        Signal handlers are installed only on the main thread; a second signal while
        shutting down exits at once (the broker redelivers what was in flight).

        Returns:
            The exit code, as `shutdown`.
        """
        run_until_stopped(self.start, self._stopped, self._on_signal)
        if self.crashed is not None:
            # The I/O thread is gone: handlers still running cannot be acked, but they may
            # finish what they do before the process exits (their messages come back).
            self._wait_idle(self.shutdown_timeout_s)
        return self.exit_code

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._shutting_down:
            log.warning("worker_killed", signal=signal.Signals(signum).name)
            raise SystemExit(EXIT_SHUTDOWN_TIMEOUT)
        log.info("worker_stopping", signal=signal.Signals(signum).name)
        self.request_shutdown()

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)

    # Handler threads --------------------------------------------------------------------

    def _handle_jobs(self) -> None:
        work = self._work
        while True:
            job = work.get()
            if job is None:
                return
            if job.generation != self._generation:
                continue  # its channel is gone; the broker redelivers it
            if not self._accepting:
                self._post(job, REQUEUE)
                continue
            with self._running_lock:
                self._running += 1
            try:
                outcome = job.executor.run(job.delivery)
                self.stats.count(outcome)
            except BaseException as exc:  # noqa: BLE001  # a fault of ours: stop, loudly
                self._handler_thread_failed(job, exc)
                return
            finally:
                with self._running_lock:
                    self._running -= 1
            self._post(job, outcome)

    def _handler_thread_failed(self, job: _Job, error: BaseException) -> None:
        log.error(
            "handler_thread_failed",
            message_id=job.delivery.message_id,
            error=f"{type(error).__name__}: {error}",
            exc_info=error,
        )
        self._post(job, REJECT)
        reason = f"a handler thread failed: {type(error).__name__}: {error}"
        self.call_soon(functools.partial(self._fail, reason, EXIT_INTERNAL_ERROR))

    def _post(self, job: _Job, result: Outcome | str) -> None:
        self._done.append((job, result))
        if not self._wake_pending:
            self._wake_pending = True
            self.call_soon(self._settle_done)

    # I/O thread: channel set-up ---------------------------------------------------------

    def on_connected(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def on_crashed(self, error: BaseException) -> None:
        self.fatal_error = f"the worker's I/O thread failed: {type(error).__name__}: {error}"
        self.exit_code = EXIT_INTERNAL_ERROR
        self._shutting_down = True
        self._accepting = False
        self.consuming.clear()
        for _ in self._pool:
            self._work.put(None)

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_cancelled)
        self._declaring = True
        channel.confirm_delivery(
            self._on_confirm,
            callback=lambda _frame: topology.declare_async(channel, self._steps, self._on_declared),
        )

    def _on_declared(self) -> None:
        self._declaring = False
        channel = self._channel
        if channel is None:
            return
        channel.basic_qos(prefetch_count=self.prefetch, callback=lambda _frame: self._consume())

    def _consume(self) -> None:
        channel = self._channel
        if channel is None:
            return
        if self._shutting_down:
            self._maybe_finish()
            return
        self._consumers = {}
        self._active = set()
        for queue_name in self._executors:
            self._consume_queue(channel, queue_name)
        self._accepting = True
        self.consuming.set()
        log.info(
            "worker_consuming",
            queues=sorted(self._executors),
            threads=self.threads,
            prefetch=self.prefetch,
        )

    def _consume_queue(self, channel: Channel, queue_name: str) -> None:
        tag = channel.basic_consume(queue_name, self._on_message)
        self._consumers[tag] = self._executors[queue_name]
        self._active.add(tag)

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        was_declaring = self._declaring
        self._forget_channel()
        if self._shutting_down:
            self._maybe_finish()
            return
        connection = self.connection
        if connection is None or not connection.is_open:
            # The connection is gone too (pika closes its channels first): on_connected
            # sets everything up again after reconnecting.
            log.warning("worker_disconnected", error=describe(reason))
            return
        if was_declaring and isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            self._fail(f"declaring the topology failed: {describe(reason)}", EXIT_FATAL)
            return
        log.warning("worker_channel_lost", error=describe(reason))
        self.call_later(1.0, self._reopen_channel)

    def _reopen_channel(self) -> None:
        connection = self.connection
        if self._channel is None and connection is not None and connection.is_open:
            connection.channel(on_open_callback=self._on_channel_open)

    def _on_cancelled(self, frame: Any) -> None:
        # The broker cancelled a consumer: its queue was deleted (or, on RabbitMQ 4.3+, it
        # held a delivery past the consumer timeout). The channel stays open, so handlers
        # in flight can still be acked: declare the queue again and consume anew.
        tag = frame.method.consumer_tag
        executor = self._consumers.get(tag)
        self._active.discard(tag)
        self.consuming.clear()
        log.warning("worker_consumer_cancelled", consumer_tag=tag)
        if executor is not None:
            channel = self._channel
            self.call_later(1.0, functools.partial(self._resume, channel, executor))

    def _resume(self, channel: Channel | None, executor: Executor) -> None:
        if channel is None or channel is not self._channel or not channel.is_open:
            return  # the channel went meanwhile: a new one consumes everything
        if self._shutting_down:
            return
        queue_name = naming.queue_name(self.namespace, executor.actor.queue)
        self._declaring = True

        def consume_again() -> None:
            self._declaring = False
            if channel is not self._channel or not channel.is_open or self._shutting_down:
                return
            self._consume_queue(channel, queue_name)
            if len(self._active) == len(self._executors):
                self.consuming.set()
            log.info("worker_consumer_resumed", queue=queue_name)

        topology.declare_async(
            channel,
            topology.steps(self.namespace, [executor.actor], with_delay_levels=False),
            consume_again,
        )

    def on_disconnected(self, reason: BaseException) -> None:
        self._forget_channel()
        if self._shutting_down:
            self._maybe_finish()

    def _forget_channel(self) -> None:
        # Everything delivered on the old channel is the broker's again.
        self._generation += 1
        self._channel = None
        self._accepting = False
        self._declaring = False
        self.consuming.clear()
        self._outstanding = 0
        self._republishing.clear()
        self._returned.clear()
        self._publish_tag = 0
        self._active = set()

    # I/O thread: deliveries and outcomes ------------------------------------------------

    def _on_message(
        self,
        channel: Channel,
        method: Basic.Deliver,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        tag: int = method.delivery_tag  # type: ignore[assignment]  # always set on Deliver
        executor = self._consumers.get(method.consumer_tag or "")
        if not self._accepting or executor is None:
            channel.basic_nack(tag, requeue=True)
            return
        try:
            item = wire.delivery(method, props, body)
        except Exception:  # cannot even read it: the broker dead-letters it
            log.exception("delivery_unreadable", delivery_tag=tag)
            channel.basic_reject(tag, requeue=False)
            return
        self._outstanding += 1
        self._work.put(_Job(self._generation, tag, executor, item))

    def _open_channel_of(self, job: _Job) -> Channel | None:
        """The channel `job` was delivered on, if it is still open; else log the drop."""
        channel = self._channel
        if job.generation == self._generation and channel is not None and channel.is_open:
            return channel
        log.info(
            "ack_dropped",
            message_id=job.delivery.message_id,
            reason="channel closed since delivery; the broker redelivers it",
        )
        return None

    def _settle_done(self) -> None:
        self._wake_pending = False
        done = self._done
        while done:
            job, result = done.popleft()
            channel = self._open_channel_of(job)
            if channel is None:
                continue
            if result == REQUEUE:
                channel.basic_nack(job.delivery_tag, requeue=True)
                self._outstanding -= 1
            elif result == REJECT:
                channel.basic_reject(job.delivery_tag, requeue=True)
                self._outstanding -= 1
            elif isinstance(result, Outcome) and result.fate == "ack":
                channel.basic_ack(job.delivery_tag)
                self._outstanding -= 1
            elif isinstance(result, Outcome):
                self._publish_then_ack(channel, job, result)
        self._maybe_finish()

    def _publish_then_ack(self, channel: Channel, job: _Job, outcome: Outcome) -> None:
        """Publish the retry or dead letter of `job`; its confirm acks the original."""
        actor_queue = job.executor.actor.queue
        if outcome.fate == "dead_letter":
            exchange, routing_key = "", naming.dlq_name(self.namespace, actor_queue)
        elif outcome.delay_s > 0:
            exchange = naming.delay_exchange(self.namespace, delays.LEVELS - 1)
            routing_key = delays.routing_key(outcome.delay_s, queue=actor_queue)
        else:
            exchange, routing_key = "", naming.queue_name(self.namespace, actor_queue)
        try:
            self._republish(channel, exchange, routing_key, job, outcome.headers)
            return
        except Exception as exc:  # noqa: BLE001  # a copied header pika cannot encode
            log.warning(
                "republish_headers_replaced",
                message_id=job.delivery.message_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        try:
            self._republish(
                channel, exchange, routing_key, job, wire.encodable_headers(outcome.headers)
            )
        except Exception:  # still not publishable: let the broker dead-letter
            log.exception("republish_failed", message_id=job.delivery.message_id)
            channel.basic_reject(job.delivery_tag, requeue=False)
            self._outstanding -= 1

    def _republish(
        self,
        channel: Channel,
        exchange: str,
        routing_key: str,
        job: _Job,
        headers: dict[str, Any],
    ) -> None:
        channel.basic_publish(
            exchange,
            routing_key,
            job.delivery.body,
            wire.republish_properties(job.delivery, headers),
            mandatory=True,
        )
        self._publish_tag += 1
        self._republishing[self._publish_tag] = job

    def _on_return(
        self, _channel: Channel, _method: Any, props: pika.BasicProperties, _body: bytes
    ) -> None:
        for tag, job in self._republishing.items():
            if job.delivery.message_id == props.message_id and tag not in self._returned:
                self._returned.add(tag)
                return

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, Basic.Ack)
        tags = (
            [tag for tag in self._republishing if tag <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        channel = self._channel
        for tag in tags:
            job = self._republishing.pop(tag, None)
            if job is None or channel is None or not channel.is_open:
                continue
            returned = tag in self._returned
            self._returned.discard(tag)
            if acked and not returned:
                channel.basic_ack(job.delivery_tag)
                self._outstanding -= 1
                continue
            # Keep the original: it comes back to its queue and is handled again once the
            # queue its retry or dead letter goes to exists again (declared below).
            log.error(
                "republish_not_stored",
                message_id=job.delivery.message_id,
                reason="no queue took it" if returned else "broker nacked",
            )
            topology.declare_async(
                channel,
                topology.steps(self.namespace, [job.executor.actor]),
                functools.partial(self._requeue_later, channel, job),
            )
        self._maybe_finish()

    def _requeue_later(self, channel: Channel, job: _Job) -> None:
        if job.generation == self._generation and channel.is_open:
            channel.basic_nack(job.delivery_tag, requeue=True)
            self._outstanding -= 1
            self._maybe_finish()

    # I/O thread: shutdown ---------------------------------------------------------------

    def _begin_shutdown(self) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        self._accepting = False
        self.consuming.clear()  # health checks fail from now on: this worker is leaving
        self.call_later(self.shutdown_timeout_s, self._shutdown_timed_out)
        channel = self._channel
        if channel is not None and channel.is_open:
            for tag in self._active:
                channel.basic_cancel(tag)
        requeued = 0
        while True:
            try:
                job = self._work.get_nowait()
            except queue.Empty:
                break
            if job is None:
                continue
            if job.generation == self._generation and channel is not None and channel.is_open:
                channel.basic_nack(job.delivery_tag, requeue=True)
                self._outstanding -= 1
                requeued += 1
        log.info(
            "worker_draining",
            in_flight=self._outstanding,
            running=self._running,
            requeued=requeued,
            connected=self.connected.is_set(),
        )
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._shutting_down or self._stopping:
            return
        if self._outstanding > 0 or self._republishing or self._running > 0:
            return  # handlers still run (also while disconnected: let them finish)
        self._finish()

    def _shutdown_timed_out(self) -> None:
        if self._stopping:
            return
        log.warning(
            "worker_shutdown_timeout",
            in_flight=self._outstanding,
            running=self._running,
            timeout_s=self.shutdown_timeout_s,
            hint="handlers still running are cut off; the broker redelivers their messages",
        )
        self.exit_code = max(self.exit_code, EXIT_SHUTDOWN_TIMEOUT)
        self._finish()

    def _fail(self, reason: str, exit_code: int) -> None:
        """Stop because the worker cannot go on: unhealthy at once, exit with `exit_code`.

        Handlers in flight may finish (up to the shutdown timeout), as on SIGTERM.
        """
        if self.fatal_error is None:
            self.fatal_error = reason
        self.exit_code = max(self.exit_code, exit_code)
        log.error("worker_failed", error=reason, exit_code=exit_code)
        self._begin_shutdown()

    def _finish(self) -> None:
        for _ in self._pool:
            self._work.put(None)
        log.info(
            "worker_stopped", handled=self.stats.handled, dead_lettered=self.stats.dead_lettered
        )
        self._begin_stop()
