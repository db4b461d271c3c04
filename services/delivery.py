"""What a consumer receives and what becomes of it: `Delivery` and `Outcome`.

Every broker builds a `Delivery` from what arrived (on RabbitMQ from whatever a client sent,
so nothing in it is trusted); the executor turns it into an `Outcome`; the consumer settles
the delivery by its outcome. Here, not beside the executor, so that the consumers, the
dead-letter tools, middleware and tests import them without the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from leveret.schemas import wire
from leveret.schemas.envelope import Envelope, attempt_of, new_message_id, seconds_since_epoch


@dataclass(slots=True)
class Delivery:
    """A delivery as any broker hands it over.

    The RabbitMQ side builds it from whatever a client sent
    (`leveret.services.rabbitmq._properties.delivery`), so nothing here is trusted: `envelope`
    reads each field defensively.

    Attributes:
        body: Raw body.
        topic: The AMQP ``type`` property, else the routing key of a ``publish``.
        message_id: The ``message_id`` property; a delivery without one gets a fresh id
            here, which its retries and dead letter keep.
        correlation_id: The ``correlation_id`` property.
        timestamp: The ``timestamp`` property, seconds since the epoch.
        headers: AMQP headers.
        redelivered: The broker's redelivered flag.
        exchange: The exchange it was published to.
        routing_key: Its routing key.
        reply_to: The ``reply_to`` property: where a request (an ask) wants its answer.
            Untrusted too: a worker answers only addresses of `wire.REPLY_TO_PREFIX`.
    """

    body: bytes
    topic: str | None
    message_id: str
    correlation_id: str | None
    timestamp: int | None
    headers: Mapping[str, Any]
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""
    reply_to: str | None = None

    def __post_init__(self) -> None:
        if not self.message_id:
            self.message_id = new_message_id()

    def envelope(self) -> Envelope:
        """The envelope a handler sees (never raises, whatever the delivery holds)."""
        seconds = seconds_since_epoch(self.timestamp)
        return Envelope(
            message_id=self.message_id,
            topic=self.topic or "",
            correlation_id=self.correlation_id,
            timestamp=(
                datetime.fromtimestamp(seconds, UTC) if seconds is not None else datetime.now(UTC)
            ),
            attempt=attempt_of(self.headers.get(wire.ATTEMPT)),
            headers=self.headers,
            redelivered=self.redelivered,
        )


Fate = Literal["ack", "retry", "dead_letter"]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a request, for the consumer to publish when it settles the request.

    Attributes:
        to: The request's ``reply_to`` (a direct reply-to address).
        correlation_id: The request's message id: the asker matches replies by it.
        status: ``ok`` (`body` is the answer) or ``error`` (the request was dead-lettered).
        actor: The actor answering (its queue name).
        topic: The answer's topic (``ok`` only).
        body: The answer's JSON (``ok`` only).
        message_id: The answer's own id.
        headers: Headers to send: the error's on ``error``, the middleware's (trace
            context) on either.
    """

    to: str
    correlation_id: str
    status: Literal["ok", "error"]
    actor: str
    message_id: str
    topic: str = ""
    body: bytes = b""
    headers: Mapping[str, Any] = field(default_factory=dict)

    def wire_headers(self) -> dict[str, Any]:
        """Every header the reply is published with."""
        return {
            **self.headers,
            wire.REPLY_STATUS: self.status,
            wire.REPLYING_ACTOR: self.actor,
        }


@dataclass(slots=True)
class Outcome:
    """What the broker must do with a delivery once its handler is done.

    Attributes:
        fate: ``ack`` (handled), ``retry`` (published again after `delay_s`, then ack) or
            ``dead_letter`` (to the actor's `.dlq`, then ack).
        envelope: The delivery's envelope.
        headers: For retries and dead letters: the headers to publish with (attempt count,
            ``x-leveret-error-*``).
        error: The exception behind a retry or dead letter, if any.
        delay_s: For retries: whole seconds to wait (0: at once).
        reply: The answer to publish to the request's caller, if it asked (on ``ack``
            with the handler's answer, on ``dead_letter`` with the error).
        expired: An ask taken after its deadline: acked without running its handler.
    """

    fate: Fate
    envelope: Envelope
    headers: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    delay_s: int = 0
    reply: Reply | None = None
    expired: bool = False
