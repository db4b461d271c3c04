"""Internal: what a caller hands the publisher, and what it gets back.

An `Outgoing` is one message on its way to the broker (its route, body and properties, and
the publisher's marks on it: written, nacked); a `Batch` is the messages one caller waits
for together, settled one by one on the I/O thread as confirms come in. Once the caller
stops waiting, `conclude` says what became of each: confirmed, refused (`PublishError`),
never sent (`BrokerUnavailable`) or sent without a confirm in time (`PublishTimeout`: the
broker may have it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pika

from leveret.schemas.envelope import Envelope
from leveret.schemas.errors import BrokerUnavailable, InvalidArgument, PublishError, PublishTimeout
from leveret.services.rabbitmq import _properties as wire_properties

_SHORT_STRING_BYTES = 255  # AMQP's limit on a short string: names, ids, the type


@dataclass(slots=True, eq=False)
class Outgoing:
    """One message on its way to the broker.

    Attributes:
        exchange: Exchange to publish to (``""`` for a queue by name).
        routing_key: Topic, or queue name on the default exchange.
        body: The JSON body.
        properties: AMQP properties (message id, type, headers…), or None to build them
            from `envelope` when the message is written: a big batch then keeps fewer
            objects alive until confirmed (fewer for the garbage collector to walk).
        unroutable_is_error: True for `send`: no queue receiving it is a `PublishError`.
        envelope: The message's envelope, when `properties` is None.
    """

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties | None
    unroutable_is_error: bool = False
    envelope: Envelope | None = None
    batch: Batch | None = None
    index: int = 0
    sent_at: float = 0.0  # perf_counter when written, only while middleware looks
    nacks: int = 0  # times the broker refused it; it is sent again after a pause
    written: bool = False  # written on a connection since lost: the broker may have it

    @property
    def message_id(self) -> str:
        """The message id (from the properties, else the envelope)."""
        if self.properties is not None:
            return self.properties.message_id or ""
        return self.envelope.message_id if self.envelope is not None else ""

    def wire_properties(self, stamps: wire_properties.Timestamps) -> pika.BasicProperties:
        """The AMQP properties to write (built from the envelope unless given)."""
        if self.properties is not None:
            return self.properties
        assert self.envelope is not None, "an Outgoing has properties or an envelope"
        return wire_properties.properties(self.envelope, timestamps=stamps)


@dataclass(slots=True, eq=False)
class Batch:
    """Messages whose callers wait together; settled when every message is confirmed.

    Attributes:
        remaining: Messages not settled yet.
        errors: Why each refused message was refused, by index.
        timed_out: Indices of messages that had no confirm when the caller stopped waiting
            (they may still be stored: the broker had them, or not).
        unroutable: Indices of fan-out publishes no queue took.
    """

    remaining: int
    done: threading.Event = field(default_factory=threading.Event)
    errors: dict[int, str] = field(default_factory=dict)
    timed_out: list[int] = field(default_factory=list)
    unroutable: list[int] = field(default_factory=list)
    unavailable: list[int] = field(default_factory=list)
    """Indices of messages never written: the broker could not be reached in time."""
    submitted_at: float = 0.0
    """Monotonic time the batch was handed over (its wait for a connection counts from it)."""
    # Set when the caller gave up waiting (PublishError): its messages are not sent again.
    abandoned: bool = False
    settled: list[bool] = field(default_factory=list)
    on_done: Callable[[], None] | None = None
    """Called on the I/O thread once every message is settled (an awaiting caller)."""
    nacks: int = 0
    """Times the broker refused (nacked) a message of the batch; each was sent again."""
    last_nack: str | None = None

    def settle(self, index: int, error: str | None, unroutable: bool) -> None:
        """Record one message's outcome (I/O thread only)."""
        if self.settled[index]:
            return
        self.settled[index] = True
        if error is not None:
            self.errors[index] = error
        elif unroutable:
            self.unroutable.append(index)
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()
            if self.on_done is not None:
                self.on_done()


def batch_error(batch: Batch, index: int, message_id: str | None, more: str = "") -> PublishError:
    """The error of message `index` of a settled `batch`, of the kind its fate calls for:
    `BrokerUnavailable` (never sent), `PublishTimeout` (no confirm: it may be stored), else
    `PublishError` (refused, no queue, not encodable); `more` is added to its text."""
    reason = batch.errors[index] + more
    if index in batch.unavailable:
        return BrokerUnavailable(reason, message_id=message_id)
    if index in batch.timed_out:
        return PublishTimeout(reason, message_id=message_id)
    return PublishError(reason, message_id=message_id)


def conclude(
    batch: Batch, items: Sequence[Outgoing], late: str | None, raise_errors: bool
) -> Batch:
    """What a caller gets once it stopped waiting for `batch`.

    Args:
        batch: The caller's batch, given up (`Publisher._abandon`) unless settled in time.
        items: Its messages.
        late: Why messages still unsettled had no confirm in time; None when all settled.
        raise_errors: Raise the first message's error instead of returning the batch.

    Raises:
        PublishError: `batch_error` of the first late or refused message (`raise_errors`).
    """
    if not items:
        return batch
    if late is not None:
        if batch.last_nack is not None:
            late = f"{batch.last_nack} ({batch.nacks} nack(s), each sent again); {late}"
        unsettled = [index for index, done in enumerate(batch.settled) if not done]
        for index in unsettled:
            if items[index].written:  # the broker may have it
                batch.timed_out.append(index)
                batch.errors.setdefault(index, late)
            else:  # never written, and never will be now
                batch.unavailable.append(index)
                batch.errors.setdefault(index, f"{late}; nothing was sent")
        if raise_errors and unsettled:
            raise batch_error(batch, unsettled[0], items[unsettled[0]].message_id)
    if batch.errors and raise_errors:
        index = next(iter(batch.errors))
        more = f" (and {len(batch.errors) - 1} more)" if len(batch.errors) > 1 else ""
        raise batch_error(batch, index, items[index].message_id, more)
    return batch


def check_encodable(item: Outgoing) -> None:
    """Fail the caller at once on a name or property AMQP cannot carry (over 255 bytes)."""
    props = item.properties
    envelope = item.envelope
    limit = _SHORT_STRING_BYTES // 4  # up to 63 characters always fit (4 bytes at most each)
    if props is None and envelope is not None:  # a new message: one check, no calls
        correlation_id = envelope.correlation_id
        if (
            len(envelope.message_id) <= limit
            and len(envelope.topic) <= limit
            and (correlation_id is None or len(correlation_id) <= limit)
            and len(item.exchange) <= limit
            and len(item.routing_key) <= limit
        ):
            return
    if props is not None:
        message_id, correlation_id, topic = props.message_id, props.correlation_id, props.type
    elif envelope is not None:
        message_id, correlation_id, topic = (
            envelope.message_id,
            envelope.correlation_id,
            envelope.topic,
        )
    else:
        message_id = correlation_id = topic = None
    if (  # the common case, Leveret's own names and ids: no loop, no encoding
        len(item.exchange) <= limit
        and len(item.routing_key) <= limit
        and _short(message_id, limit)
        and _short(correlation_id, limit)
        and _short(topic, limit)
    ):
        return
    for what, value in (
        ("exchange", item.exchange),
        ("routing key", item.routing_key),
        ("message_id", message_id),
        ("correlation_id", correlation_id),
        ("type (topic)", topic),
    ):
        # Up to 63 characters always fit (4 bytes at most each): only longer ones are encoded.
        if (
            isinstance(value, str)
            and len(value) > _SHORT_STRING_BYTES // 4
            and len(value.encode("utf-8", "replace")) > _SHORT_STRING_BYTES
        ):
            raise InvalidArgument(
                f"{what} {value[:40]!r}… is {len(value.encode('utf-8', 'replace'))} bytes; "
                f"AMQP allows at most {_SHORT_STRING_BYTES}"
            )


def _short(value: object, limit: int) -> bool:
    return not isinstance(value, str) or len(value) <= limit


def abandoned(item: Outgoing) -> bool:
    """Whether the caller waiting for `item` gave up (its publish raised PublishError)."""
    return item.batch is not None and item.batch.abandoned
