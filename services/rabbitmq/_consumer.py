"""Internal: `RabbitConsumer`, the worker runtime's consumer of RabbitMQ actor queues.

The I/O thread owns the connection and never runs user code. It declares the actors'
topology, consumes their queues within the prefetch, and hands each delivery to the
runtime. Outcomes come back from the handler threads (`settle`, `give_back`) and are posted
to the I/O thread, which acks, or first publishes the retry or dead letter with a confirm
and then acks; the answer to a request (an ask) is published before either, on a connection
of its own (`leveret.services.rabbitmq._reply_publishing`). Everything delivered on a
channel belongs to that channel's generation: an outcome for a delivery whose channel has
since died is dropped with a log line (the broker redelivers it). Retries and dead letters
go out on a channel of their own (`leveret.services.rabbitmq._republish`), so that a copy
the broker refuses never disturbs the deliveries in flight.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Sequence

import pika
import pika.exceptions
import pika.frame
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.spec import Basic

from leveret.actors.actor import Actor
from leveret.services.delivery import Outcome
from leveret.services.observability.logs import get_logger
from leveret.services.rabbitmq import _properties as wire_properties
from leveret.services.rabbitmq._connection import (
    DEFAULT_CONNECT_TIMEOUT_S,
    IOThread,
    describe,
    node_down,
)
from leveret.services.rabbitmq._declare import declare_async
from leveret.services.rabbitmq._heartbeat_publishing import HeartbeatPublisher
from leveret.services.rabbitmq._prefetch import ADAPT_EVERY_S, PrefetchController
from leveret.services.rabbitmq._reply_publishing import ReplyPublisher
from leveret.services.rabbitmq._republish import Copy, Republisher
from leveret.services.runtime.consumer import Consumer, Fail, Job, Receive
from leveret.services.runtime.worker import EXIT_FATAL, EXIT_INTERNAL_ERROR
from leveret.services.topology import declarations as topology
from leveret.services.topology import naming
from leveret.services.topology.addresses import Addresses
from leveret.services.topology.declarations import Step
from leveret.services.topology.delays import DelayQueues

log = get_logger("leveret.worker")

_REQUEUE = "requeue"  # not started: basic.nack with requeue (never counted by RabbitMQ 4.3+)
_REJECT = "reject"  # failed: basic.reject with requeue (counted towards the delivery limit)


class RabbitConsumer(IOThread, Consumer):
    """Consumes the queues of `actors` on its own connection.

    Args:
        url: AMQP URL.
        namespace: The namespace of the queues.
        actors: The actors whose queues to consume (their topology is declared first).
        prefetch: Deliveries held unacknowledged (the first value, when `adaptive`).
        capacity: Handlers the runtime runs at once (threads and async concurrency).
        adaptive: Adapt the prefetch to the handlers' speed (see `PrefetchController`).
        delay_queues: The delay levels' queue type.
        connect_timeout_s: How long one connection attempt may take.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        actors: Sequence[type[Actor]],
        *,
        prefetch: int,
        capacity: int = 0,
        adaptive: bool = False,
        delay_queues: DelayQueues = "classic",
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        IOThread.__init__(self, url, role="worker", connect_timeout_s=connect_timeout_s)
        self.namespace = namespace
        self.delay_queues = delay_queues
        self.prefetch = prefetch
        self.capacity = capacity
        self._controller = PrefetchController(prefetch, max(capacity, 1)) if adaptive else None
        self.consuming = threading.Event()
        self._actors = {naming.queue_name(namespace, actor.queue): actor for actor in actors}
        self._steps = topology.steps(namespace, actors, delay_queues=delay_queues)
        # Without the delay levels: what is declared again while a node holding (classic)
        # levels is down, so that the actors' own queues are consumed meanwhile.
        self._steps_without_levels = topology.steps(
            namespace, actors, with_delay_levels=False, delay_queues=delay_queues
        )
        self._levels_node_down = False
        self._receive: Receive = _nowhere
        self._fail: Fail = _no_failure
        self._done: deque[tuple[Job, Outcome | str]] = deque()
        self._wake_pending = False
        self._generation = 0
        self._channel: Channel | None = None
        self._consumers: dict[str, str] = {}  # consumer tag -> queue, cancelled ones too
        self._active: set[str] = set()  # tags consuming now
        self._accepting = False
        self._stopping_consumers = False
        self._declaring = False
        self._outstanding = 0
        self._settled = threading.Event()
        self._settled.set()
        self._republisher = Republisher(
            self,
            stored=self._ack_original,
            refused=self._keep_original,
            unencodable=self._dead_letter_original,
            steps=self._current_steps,
            current=self.current,
        )
        self._heartbeats = HeartbeatPublisher(self, naming.heartbeats_exchange(namespace))
        self._replies = ReplyPublisher(url, connect_timeout_s=connect_timeout_s)
        self._local_address: str | None = None

    # Consumer, any thread ---------------------------------------------------------------

    def start(self, receive: Receive, fail: Fail) -> None:  # type: ignore[override]
        self._receive = receive
        self._fail = fail
        IOThread.start(self)

    def current(self, job: Job) -> bool:
        return job.generation == self._generation

    def settle(self, job: Job, outcome: Outcome) -> None:
        self._post(job, outcome)

    def give_back(self, job: Job, *, failed: bool) -> None:
        self._post(job, _REJECT if failed else _REQUEUE)

    def stop_consuming(self) -> None:
        self.consuming.clear()  # health checks fail from now on: this worker is leaving
        if self.running:
            self.call_soon(self._stop_consuming)

    def wait_settled(self, timeout_s: float) -> bool:
        if not self.running:
            return True  # no connection left to settle anything on
        return self._settled.wait(timeout_s)

    def close(self) -> None:
        self.consuming.clear()
        self.stop()
        self._replies.close()

    def alive(self) -> bool:
        return self.running

    def log_fields(self) -> dict[str, object]:
        return {"in_flight": self._outstanding, "connected": self.connected.is_set()}

    def connection_state(self) -> tuple[bool, int]:
        return self.connected.is_set(), self.connections_opened

    def local_address(self) -> str | None:
        return self._local_address

    def publish_heartbeat(self, body: bytes) -> None:
        if self.running and self.connected.is_set():
            self.call_soon(functools.partial(self._heartbeats.publish, body))

    @property
    def presence(self) -> RabbitConsumer:
        return self  # its connection: connection_state, local_address, publish_heartbeat

    def _post(self, job: Job, result: Outcome | str) -> None:
        self._done.append((job, result))
        if not self._wake_pending:
            self._wake_pending = True
            self.call_soon(self._settle_done)

    # I/O thread: channel set-up ---------------------------------------------------------

    def on_connected(self, connection: SelectConnection) -> None:
        self._local_address = _local_address(connection)
        connection.channel(on_open_callback=self._on_channel_open)

    def on_crashed(self, error: BaseException) -> None:
        self.consuming.clear()
        self._accepting = False
        self._settled.set()
        self._fail(
            f"the worker's I/O thread failed: {type(error).__name__}: {error}",
            EXIT_INTERNAL_ERROR,
        )

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(self._on_cancelled)
        self._declaring = True
        declare_async(channel, self._current_steps(), self._on_declared)

    def _current_steps(self) -> list[Step]:
        """The topology to declare: without the delay levels while a node holding one is
        down (see `_on_channel_closed`)."""
        return self._steps_without_levels if self._levels_node_down else self._steps

    def _on_declared(self) -> None:
        self._declaring = False
        channel = self._channel
        if channel is None:
            return
        channel.basic_qos(prefetch_count=self.prefetch, callback=lambda _frame: self._consume())

    def _consume(self) -> None:
        channel = self._channel
        if channel is None or self._stopping_consumers:
            return
        self._consumers = {}
        self._active = set()
        for queue_name in self._actors:
            self._consume_queue(channel, queue_name)
        self._accepting = True
        self.consuming.set()
        log.info(
            "worker_consuming",
            queues=sorted(self._actors),
            handlers_at_once=self.capacity,
            prefetch=self.prefetch,
            prefetch_adaptive=self._controller is not None,
        )
        if self._controller is not None:
            self.call_later(ADAPT_EVERY_S, functools.partial(self._adapt, channel))

    # I/O thread: adaptive prefetch ------------------------------------------------------

    def _adapt(self, channel: Channel | None, *, again: bool = True) -> None:
        """Every `ADAPT_EVERY_S` while `channel` consumes: apply the controller's prefetch.

        RabbitMQ applies a new ``basic.qos`` to consumers started after it, so each queue
        is consumed anew (the old consumer cancelled): what it delivered is still settled
        on this channel. A delivery on its way to the old consumer at that moment goes back
        to the queue and comes again (redelivered), which can swap the order of two
        messages; a fixed ``--prefetch`` never changes consumers.
        """
        controller = self._controller
        if controller is None or channel is None or channel is not self._channel:
            return  # a new channel starts its own timer
        if not channel.is_open or self._stopping_consumers or not self._accepting:
            return
        target = controller.target()
        if target != self.prefetch and self._active:
            log.info(
                "worker_prefetch_adapted",
                prefetch=target,
                previous=self.prefetch,
                handler_ms=round((controller.average_s or 0.0) * 1000, 3),
            )
            self.prefetch = target
            channel.basic_qos(
                prefetch_count=target, callback=lambda _frame: self._consume_again(channel)
            )
        if again:
            self.call_later(ADAPT_EVERY_S, functools.partial(self._adapt, channel))

    def _consume_again(self, channel: Channel) -> None:
        if channel is not self._channel or not channel.is_open or self._stopping_consumers:
            return
        for tag in list(self._active):
            queue_name = self._consumers[tag]
            channel.basic_cancel(tag)
            self._active.discard(tag)
            self._consume_queue(channel, queue_name)

    def _consume_queue(self, channel: Channel, queue_name: str) -> None:
        tag = channel.basic_consume(queue_name, self._on_message)
        self._consumers[tag] = queue_name
        self._active.add(tag)

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        was_declaring = self._declaring
        self._forget_channel()
        if self._stopping_consumers or self._stopping:
            return
        connection = self.connection
        if connection is None or not connection.is_open:
            # The connection is gone too (pika closes its channels first): on_connected
            # sets everything up again after reconnecting.
            log.warning("worker_disconnected", error=describe(reason))
            return
        if (
            was_declaring
            and isinstance(reason, pika.exceptions.ChannelClosedByBroker)
            and not node_down(reason)
        ):
            self._fail(f"declaring the topology failed: {describe(reason)}", EXIT_FATAL)
            return
        if node_down(reason):  # a cluster node holding one of our queues: it comes back
            if not self._levels_node_down:
                # Maybe a delay level (declared before, by us or another process): declare
                # the actors' own queues only, and consume them meanwhile.
                self._levels_node_down = True
                log.warning(
                    "worker_queue_node_down",
                    error=describe(reason),
                    retry_in_s=0.1,
                    declaring="actor queues only, not the delay levels",
                )
                self.call_later(0.1, self._reopen_channel)
                return
            log.warning("worker_queue_node_down", error=describe(reason), retry_in_s=2.0)
            self.call_later(2.0, self._reopen_channel)
            return
        log.warning("worker_channel_lost", error=describe(reason))
        self.call_later(1.0, self._reopen_channel)

    def _reopen_channel(self) -> None:
        connection = self.connection
        if self._channel is None and connection is not None and connection.is_open:
            connection.channel(on_open_callback=self._on_channel_open)

    def _on_cancelled(self, frame: pika.frame.Method[Basic.Cancel]) -> None:
        # The broker cancelled a consumer: its queue was deleted (or, on RabbitMQ 4.3+, it
        # held a delivery past the consumer timeout). The channel stays open, so handlers
        # in flight can still be acked: declare the queue again and consume anew.
        tag = frame.method.consumer_tag or ""
        queue_name = self._consumers.get(tag)
        self._active.discard(tag)
        self.consuming.clear()
        log.warning("worker_consumer_cancelled", consumer_tag=tag)
        if queue_name is not None:
            channel = self._channel
            self.call_later(1.0, functools.partial(self._resume, channel, queue_name))

    def _resume(self, channel: Channel | None, queue_name: str) -> None:
        if channel is None or channel is not self._channel or not channel.is_open:
            return  # the channel went meanwhile: a new one consumes everything
        if self._stopping_consumers:
            return
        self._declaring = True

        def consume_again() -> None:
            self._declaring = False
            if channel is not self._channel or not channel.is_open or self._stopping_consumers:
                return
            self._consume_queue(channel, queue_name)
            if len(self._active) == len(self._actors):
                self.consuming.set()
            log.info("worker_consumer_resumed", queue=queue_name)

        declare_async(
            channel,
            topology.steps(self.namespace, [self._actors[queue_name]], with_delay_levels=False),
            consume_again,
        )

    def on_disconnected(self, reason: BaseException) -> None:
        self._heartbeats.reset()
        self._republisher.reset()
        self._forget_channel()

    def _forget_channel(self) -> None:
        # Everything delivered on the old channel is the broker's again.
        self._generation += 1
        self._channel = None
        self._accepting = False
        self._declaring = False
        self.consuming.clear()
        self._outstanding = 0
        self._active = set()
        self._check_settled()

    def _stop_consuming(self) -> None:
        self._stopping_consumers = True
        self._accepting = False
        self.consuming.clear()
        channel = self._channel
        if channel is not None and channel.is_open:
            for tag in self._active:
                channel.basic_cancel(tag)
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
        queue_name = self._consumers.get(method.consumer_tag or "")
        if not self._accepting or queue_name is None:
            channel.basic_nack(tag, requeue=True)
            return
        try:
            item = wire_properties.delivery(method, props, body)
        except Exception:  # cannot even read it: the broker dead-letters it
            log.exception("delivery_unreadable", delivery_tag=tag)
            channel.basic_reject(tag, requeue=False)
            return
        self._outstanding += 1
        self._settled.clear()
        self._receive(Job(item, queue_name, self._generation, tag))

    def _open_channel_of(self, job: Job) -> Channel | None:
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
        controller = self._controller
        if controller is not None and controller.due():
            self._adapt(self._channel, again=False)
        while done:
            job, result = done.popleft()
            if controller is not None and isinstance(result, Outcome):
                controller.observe(job.handled_s)
            if isinstance(result, Outcome) and result.fate == "ack" and result.reply is not None:
                # Even if the request's channel died: the caller has its answer now, rather
                # than a timeout (the redelivered request is answered again: dropped late).
                self._replies.publish(result.reply)
            channel = self._open_channel_of(job)
            if channel is None:
                continue
            if result == _REQUEUE:
                channel.basic_nack(job.tag, requeue=True)
                self._outstanding -= 1
            elif result == _REJECT:
                channel.basic_reject(job.tag, requeue=True)
                self._outstanding -= 1
            elif isinstance(result, Outcome) and result.fate == "ack":
                channel.basic_ack(job.tag)
                self._outstanding -= 1
            elif isinstance(result, Outcome):
                if result.reply is not None:  # the error, for the caller of a request
                    self._replies.publish(result.reply)
                self._publish_then_ack(job, result)
        self._check_settled()

    def _publish_then_ack(self, job: Job, outcome: Outcome) -> None:
        """Publish the retry or dead letter of `job`; its confirm acks the original."""
        actor_queue = self._actors[job.queue].queue
        addresses = Addresses(self.namespace, self.delay_queues)
        if outcome.fate == "dead_letter":
            address = addresses.dead_letter(actor_queue)
        else:
            address = addresses.retry(actor_queue, outcome.delay_s)
        # A retry of a request keeps its reply_to; a dead letter has none (a replay must not
        # answer a caller long gone).
        reply_to = job.delivery.reply_to if outcome.fate == "retry" else None
        self._republisher.publish(
            Copy(job, address.exchange, address.routing_key, outcome.headers, reply_to)
        )

    def _ack_original(self, job: Job) -> None:
        """Its retry or dead letter is stored: ack the original (if its channel lives)."""
        channel = self._open_channel_of(job)
        if channel is not None:
            channel.basic_ack(job.tag)
            self._outstanding -= 1
            self._check_settled()

    def _keep_original(self, job: Job, why: str) -> None:
        """Its retry or dead letter was not stored (or may not be): the original goes back
        to its queue and is handled again, once the topology its copy goes to is declared
        again (a `.dlq` or delay level deleted meanwhile exists again by then)."""
        log.error("republish_not_stored", message_id=job.delivery.message_id, reason=why)
        steps = topology.steps(
            self.namespace,
            [self._actors[job.queue]],
            with_delay_levels=not self._levels_node_down,
            delay_queues=self.delay_queues,
        )
        _declare_then(self.connection, steps, functools.partial(self._requeue, job))

    def _dead_letter_original(self, job: Job) -> None:
        """No copy of it can be written: the broker dead-letters the original instead."""
        self._reject(job, requeue=False)

    def _requeue(self, job: Job) -> None:
        # A reject, which counts towards the queue's delivery limit (a nack does not on
        # RabbitMQ 4.3+): a message whose copy is refused for good ends dead-lettered by
        # the broker instead of going round for ever.
        self._reject(job, requeue=True)

    def _reject(self, job: Job, *, requeue: bool) -> None:
        channel = self._open_channel_of(job)
        if channel is not None:
            channel.basic_reject(job.tag, requeue=requeue)
            self._outstanding -= 1
            self._check_settled()

    def _check_settled(self) -> None:
        if self._outstanding <= 0:
            self._settled.set()


def _declare_then(
    connection: SelectConnection | None, steps: list[Step], then: Callable[[], None]
) -> None:
    """Declare `steps` on a channel of its own (a refusal closes only that one), then
    call `then` once, whatever the declaration's fate."""
    if connection is None or not connection.is_open:
        then()
        return
    called = False

    def on_closed(_channel: Channel, reason: BaseException) -> None:
        nonlocal called
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            log.warning("redeclare_refused", error=describe(reason))
        if not called:
            called = True
            then()

    def on_open(channel: Channel) -> None:
        channel.add_on_close_callback(on_closed)
        declare_async(channel, steps, channel.close)

    connection.channel(on_open_callback=on_open)


def _local_address(connection: SelectConnection) -> str | None:
    """``host:port`` of our end of the connection; pika keeps its socket private."""
    sock = getattr(getattr(connection, "_transport", None), "_sock", None)
    try:
        host, port = sock.getsockname()[:2]  # type: ignore[union-attr]
    except (AttributeError, OSError, TypeError, ValueError):
        return None
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _nowhere(_job: Job) -> None:
    raise RuntimeError("RabbitConsumer.start was not called")


def _no_failure(_reason: str, _exit_code: int) -> None:
    return None
