"""The envelope as AMQP properties, and AMQP deliveries as `Delivery` objects."""

from __future__ import annotations

from typing import Any, Literal

import pika
from pika.spec import Basic

from schemas import envelope as wire
from schemas.envelope import Envelope
from services.execution import Delivery

PERSISTENT: Literal[2] = 2


def properties(envelope: Envelope, headers: dict[str, Any] | None = None) -> pika.BasicProperties:
    """AMQP properties of a message: persistent JSON with Leveret's headers.

    Args:
        envelope: The message's metadata.
        headers: Headers to send instead of ``{x-leveret-attempt: envelope.attempt}``.
    """
    return pika.BasicProperties(
        content_type=wire.CONTENT_TYPE,
        type=envelope.topic,
        message_id=envelope.message_id,
        correlation_id=envelope.correlation_id,
        timestamp=int(envelope.timestamp.timestamp()),
        delivery_mode=PERSISTENT,
        headers=headers if headers is not None else {wire.ATTEMPT: envelope.attempt},
    )


def delivery(
    method: Basic.Deliver | Basic.GetOk, props: pika.BasicProperties, body: bytes
) -> Delivery:
    """A broker-independent `Delivery` from what pika hands a consumer."""
    return Delivery(
        body=body,
        topic=props.type or method.routing_key,
        message_id=props.message_id,
        correlation_id=props.correlation_id,
        timestamp=props.timestamp,
        headers=props.headers or {},
        redelivered=bool(method.redelivered),
        exchange=method.exchange or "",
        routing_key=method.routing_key or "",
    )


def republish_properties(item: Delivery, headers: dict[str, Any]) -> pika.BasicProperties:
    """Properties of a message published again (retry, dead letter, replay): the original
    message's, with new headers."""
    return pika.BasicProperties(
        content_type=wire.CONTENT_TYPE,
        type=item.topic,
        message_id=item.message_id,
        correlation_id=item.correlation_id,
        timestamp=item.timestamp,
        delivery_mode=PERSISTENT,
        headers=headers,
    )
