"""The scheduler's lock, state and publishing on RabbitMQ (see `leveret.services.scheduling`).

- **Lock**: an exclusive queue, ``{ns}._scheduler.lock``. Declaring it succeeds for one
  connection at a time (the others get ``405 RESOURCE_LOCKED``), and RabbitMQ deletes it the
  moment that connection closes: at once when the leader's process dies (its socket
  closes), two to three heartbeat intervals (``SCHEDULER_HEARTBEAT_S``, 5 s) after its
  last bytes when its network goes. A follower tries again every ``poll_s``.
- **State**: a stream, ``{ns}._scheduler.state``: each save appends the last tick sent of
  every entry (JSON); a new leader (or ``--list``) reads the last chunk, without consuming
  anything and without declaring anything (the leader declares the stream before its first
  save). Streams are replicated like quorum queues and survive a broker restart; old
  segments are removed past 10 MB. Any client on the vhost can append to the stream, so
  what is read is untrusted (`merge_states`): bounded in size and number of entries, each
  entry a schedule's name and a time in range, the rest skipped and logged.
- **Publishing**: on the lock's own connection, with confirms, so a leader that lost its
  lock (its connection) cannot publish any more either.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from leveret.actors.actor import Actor
from leveret.actors.schedules import valid_schedule_name
from leveret.schemas.errors import BrokerConnectionError, OperationError, PublishError
from leveret.services import config
from leveret.services.observability.logs import get_logger
from leveret.services.observability.redaction import redact
from leveret.services.rabbitmq import _properties as wire_properties
from leveret.services.rabbitmq._connection import (
    OPENING_ERRORS,
    connection_parameters_all,
    describe,
    node_down,
)
from leveret.services.rabbitmq._frames import TolerantSelectConnection
from leveret.services.scheduling import MAX_STATE_ENTRIES, SchedulerBackend
from leveret.services.topology import naming
from leveret.services.transport import OutgoingMessage, Scheduling, Transport

log = get_logger("leveret.scheduler")

SCHEDULER_HEARTBEAT_S = 5
_RESOURCE_LOCKED = 405
_NOT_FOUND = 404
_STATE_ARGUMENTS = {
    "x-queue-type": "stream",
    "x-max-length-bytes": 10_000_000,
    "x-stream-max-segment-size-bytes": 1_000_000,
}
_READ_IDLE_S = 0.3
_READ_MAX_S = 5.0
MAX_STATE_BYTES = 4_000_000
"""A stored state's largest body: `MAX_STATE_ENTRIES` names of 200 bytes and their ticks
fit in 2.5 MB; a larger body is not read."""
EARLIEST_TICK = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TICK = datetime(9000, 1, 1, tzinfo=UTC)
"""A stored tick outside [`EARLIEST_TICK`, `LATEST_TICK`) is not read: no leader's clock
gave it, and arithmetic on it could reach the limits of `datetime`."""
_MAX_TICK_CHARS = 64


class RabbitSchedulerBackend(SchedulerBackend):
    """One scheduler's connection to RabbitMQ: lock, state and publishing.

    Args:
        url: AMQP URL.
        namespace: The namespace whose schedules it runs.
        transport: Declares the target actors' topology.
    """

    def __init__(self, url: str, namespace: str, transport: Transport) -> None:
        self.url = url
        self.namespace = namespace
        self.transport = transport
        self._lock = naming.scheduler_lock(namespace)
        self._state = naming.scheduler_state(namespace)
        self._events = naming.events_exchange(namespace)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._holding = False
        self._state_declared = False  # on this connection

    # Connection ---------------------------------------------------------------------------

    def _connected(self) -> BlockingChannel:
        if self._connection is not None and self._connection.is_open and self._channel:
            return self._channel
        self._drop()
        nodes = connection_parameters_all(self.url, role="scheduler")
        for params, url in zip(nodes, config.broker_urls(self.url), strict=True):
            if "heartbeat=" not in url:
                params.heartbeat = SCHEDULER_HEARTBEAT_S
        try:
            self._connection = pika.BlockingConnection(
                nodes,  # tried in turn: a cluster's nodes
                _impl_class=TolerantSelectConnection,  # type: ignore[arg-type]
            )
            channel = self._connection.channel()
            channel.confirm_delivery()
        except OPENING_ERRORS as exc:
            self._drop()
            raise BrokerConnectionError(
                f"scheduler cannot reach {redact(self.url)}: {describe(exc)}"
            ) from exc
        self._channel = channel
        return channel

    def _drop(self) -> None:
        self._holding = False
        self._state_declared = False
        self._channel = None
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # it is going anyway
                connection.close()

    def _lost(self, exc: BaseException) -> BrokerConnectionError:
        self._drop()
        return BrokerConnectionError(f"scheduler lost {redact(self.url)}: {describe(exc)}")

    # Lock ---------------------------------------------------------------------------------

    def acquire(self) -> bool:
        if self.holding():
            return True
        self._connected()
        assert self._connection is not None
        try:
            attempt = self._connection.channel()
            attempt.queue_declare(self._lock, exclusive=True, auto_delete=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == _RESOURCE_LOCKED:
                return False  # another connection holds it
            raise OperationError(f"scheduler lock refused: {describe(exc)}") from exc
        except pika.exceptions.AMQPError as exc:
            raise self._lost(exc) from exc
        self._holding = True
        return True

    def holding(self) -> bool:
        return (
            self._holding
            and self._connection is not None
            and self._connection.is_open
            and self._channel is not None
            and self._channel.is_open
        )

    def release(self) -> None:
        # The exclusive queue goes with the connection: closing it frees the lock at once.
        self._drop()

    # State --------------------------------------------------------------------------------

    def load_state(self) -> dict[str, datetime]:
        """The state stored last (merged over the last chunk), read without declaring
        anything: empty when no scheduler stored one yet (there is no stream)."""
        self._connected()
        assert self._connection is not None
        merged: dict[str, datetime] = {}
        read = 0
        try:
            reader = self._connection.channel()
            try:
                reader.queue_declare(self._state, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if node_down(exc):
                    # The stream exists, but its node is starting (a broker restart
                    # accepts connections before it recovers its queues) or is down:
                    # leading without its state would skip the ticks since the last one.
                    raise OperationError(
                        f"the scheduler's state stream {self._state!r} cannot be read yet: "
                        f"{exc.reply_text}; if it stays so, delete that stream (the next "
                        "leader declares it again)"
                    ) from exc
                if exc.reply_code == _NOT_FOUND:
                    return {}  # no scheduler stored a state yet
                raise
            reader.basic_qos(prefetch_count=100)

            def take(
                channel: BlockingChannel,
                method: pika.spec.Basic.Deliver,
                _props: pika.BasicProperties,
                body: bytes,
            ) -> None:
                nonlocal read
                read += 1
                merge_into(merged, body)
                if method.delivery_tag is not None:
                    channel.basic_ack(method.delivery_tag)

            tag = reader.basic_consume(self._state, take, arguments={"x-stream-offset": "last"})
            # A stream that exists was written to: wait for its first record (a stream
            # restarting with its node is slow to deliver it), then read to an idle gap.
            deadline = time.monotonic() + _READ_MAX_S
            seen = -1
            while time.monotonic() < deadline and (read == 0 or read != seen):
                seen = read
                self._connection.process_data_events(time_limit=_READ_IDLE_S)
            reader.basic_cancel(tag)
            reader.close()
        except pika.exceptions.AMQPError as exc:
            raise self._lost(exc) from exc
        if read == 0:
            log.warning(
                "scheduler_state_unread",
                stream=self._state,
                waited_s=_READ_MAX_S,
                hint="the state stream exists but sent nothing: every entry goes on from now, "
                "and ticks missed since the last leader are not sent",
            )
        return merged

    def save_state(self, state: dict[str, datetime]) -> None:
        channel = self._connected()
        body = json.dumps(
            {"v": 1, "ticks": {name: tick.isoformat() for name, tick in sorted(state.items())}},
            ensure_ascii=False,  # names of letters and digits: at most 200 bytes each
        ).encode()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        try:
            if not self._state_declared:
                channel.queue_declare(self._state, durable=True, arguments=_STATE_ARGUMENTS)
                self._state_declared = True
            try:
                channel.basic_publish("", self._state, body, properties, mandatory=True)
            except pika.exceptions.UnroutableError:
                # The stream was deleted while this leader ran: declare it again.
                channel.queue_declare(self._state, durable=True, arguments=_STATE_ARGUMENTS)
                channel.basic_publish("", self._state, body, properties, mandatory=True)
        except pika.exceptions.UnroutableError as exc:
            raise PublishError(f"the scheduler's state reached no stream: {exc}") from exc
        except pika.exceptions.NackError as exc:
            raise PublishError(f"the broker refused the scheduler's state: {exc}") from exc
        except pika.exceptions.AMQPError as exc:
            raise self._lost(exc) from exc

    # Publishing ---------------------------------------------------------------------------

    def declare(self, actors: Sequence[type[Actor]]) -> None:
        self.transport.declare(actors)

    def publish(self, items: Sequence[OutgoingMessage]) -> list[PublishError | None]:
        channel = self._connected()
        errors: list[PublishError | None] = []
        for item in items:
            queue = item.route.queue
            exchange, routing_key = (
                ("", naming.queue_name(self.namespace, queue))
                if queue is not None
                else (self._events, item.route.topic)
            )
            try:
                channel.basic_publish(
                    exchange,
                    routing_key,
                    item.body,
                    wire_properties.properties(item.envelope),
                    mandatory=True,
                )
                errors.append(None)
            except pika.exceptions.UnroutableError:
                if queue is None:
                    log.info(
                        "message_unroutable",
                        topic=item.route.topic,
                        message_id=item.envelope.message_id,
                        hint="no queue is bound to this topic: no actor handles it (yet)",
                    )
                    errors.append(None)
                else:
                    errors.append(
                        PublishError(
                            f"no queue {routing_key!r} to deliver message "
                            f"{item.envelope.message_id} to",
                            message_id=item.envelope.message_id,
                        )
                    )
            except pika.exceptions.NackError:
                errors.append(
                    PublishError(
                        f"the broker refused message {item.envelope.message_id}",
                        message_id=item.envelope.message_id,
                    )
                )
            except pika.exceptions.AMQPError as exc:
                raise self._lost(exc) from exc
        return errors

    def wait(self, seconds: float) -> None:
        connection = self._connection
        if connection is None or not connection.is_open:
            if seconds > 0:
                time.sleep(seconds)
            return
        try:
            connection.sleep(seconds)
        except pika.exceptions.AMQPError as exc:
            raise self._lost(exc) from exc

    def close(self) -> None:
        self._drop()


class RabbitScheduling(Scheduling):
    """The scheduling role of the RabbitMQ transport: each scheduler, and each read of
    the stored state, on a connection of its own.

    Args:
        transport: The transport whose namespace it schedules in (it declares the target
            actors' topology).
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def backend(self) -> RabbitSchedulerBackend:
        return RabbitSchedulerBackend(self.transport.url, self.transport.namespace, self.transport)

    def stored_state(self) -> dict[str, datetime]:
        backend = self.backend()
        try:
            return backend.load_state()
        finally:
            backend.close()


def merge_states(bodies: Iterable[bytes]) -> dict[str, datetime]:
    """The latest tick of each entry over stored states, each read as untrusted input
    (`merge_into`)."""
    merged: dict[str, datetime] = {}
    for body in bodies:
        merge_into(merged, body)
    return merged


def merge_into(merged: dict[str, datetime], body: bytes) -> None:
    """Merge one stored state into `merged` (the latest tick of each entry wins).

    Any client on the vhost can append to the stream, so nothing is trusted: a body larger
    than `MAX_STATE_BYTES`, not JSON (or nested too deep), of another version or without a
    ``ticks`` object is skipped; so is each entry whose name is not a schedule's or whose
    tick is not an aware ISO 8601 time in [`EARLIEST_TICK`, `LATEST_TICK`), and each new
    entry past `MAX_STATE_ENTRIES`. Both are logged. Ticks come out in UTC.
    """
    ticks = _ticks_table(body)
    if ticks is None:
        return
    skipped: Counter[str] = Counter()
    for name, text in ticks.items():
        if not valid_schedule_name(name):
            skipped["not a schedule's name"] += 1
            continue
        tick = _tick(text)
        if tick is None:
            skipped["not an aware time in range"] += 1
        elif name in merged:
            merged[name] = max(merged[name], tick)
        elif len(merged) >= MAX_STATE_ENTRIES:
            skipped[f"more than {MAX_STATE_ENTRIES} entries"] += 1
        else:
            merged[name] = tick
    if skipped:
        log.warning(
            "scheduler_state_entries_skipped",
            skipped=sum(skipped.values()),
            reasons=dict(skipped),
            size=len(body),
            hint="the scheduler's state stream holds entries no scheduler wrote: skipped",
        )


def _ticks_table(body: bytes) -> dict[str, object] | None:
    """The ``ticks`` object of a stored state; None (logged) when it is not one."""
    if len(body) > MAX_STATE_BYTES:
        _unreadable(body, f"larger than {MAX_STATE_BYTES} bytes")
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8 either; nested too deep
        _unreadable(body, "not JSON")
        return None
    if not isinstance(document, dict):
        _unreadable(body, "not a JSON object")
        return None
    if type(document.get("v")) is not int or document["v"] != 1:
        _unreadable(body, "unknown version (v is not 1)")
        return None
    ticks = document.get("ticks")
    if not isinstance(ticks, dict):
        _unreadable(body, "no ticks object")
        return None
    return ticks


def _unreadable(body: bytes, reason: str) -> None:
    log.warning(
        "scheduler_state_unreadable",
        reason=reason,
        size=len(body),
        hint="a state in the scheduler's stream that no scheduler wrote: skipped",
    )


def _tick(text: object) -> datetime | None:
    """A stored tick in UTC; None unless an aware ISO 8601 time in range."""
    if not isinstance(text, str) or len(text) > _MAX_TICK_CHARS:
        return None
    try:
        tick = datetime.fromisoformat(text)
        if tick.utcoffset() is None:
            return None
        tick = tick.astimezone(UTC)
    except (ValueError, OverflowError):  # not a time; out of datetime's range in UTC
        return None
    return tick if EARLIEST_TICK <= tick < LATEST_TICK else None
