"""Internal: the envelope as AMQP properties, and AMQP deliveries as `Delivery` objects.

Inward, nothing is trusted: any AMQP client can send any properties and headers, and pika
hands over short strings that are not UTF-8 as raw bytes. `delivery` turns whatever
arrived into plain text fields within AMQP's limits, so that the rest of Leveret (and a
retry or dead letter published from it) never meets a value it cannot handle.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

import pika
import pika.data
from pika.spec import Basic

from leveret.schemas import wire
from leveret.schemas.envelope import Envelope, seconds_since_epoch
from leveret.services.delivery import Delivery

PERSISTENT: Literal[2] = 2
SHORT_STRING_BYTES = 255
"""AMQP's limit for names, routing keys and string properties (short strings)."""


class Timestamps:
    """The AMQP timestamp of envelopes, converted once per `datetime` (a batch shares one)."""

    __slots__ = ("_last", "_seconds")

    def __init__(self) -> None:
        self._last: datetime | None = None
        self._seconds = 0

    def of(self, envelope: Envelope) -> int:
        """Whole seconds since the epoch of the envelope's timestamp."""
        stamp = envelope.timestamp
        if stamp is not self._last:
            self._last = stamp
            self._seconds = int(stamp.timestamp())
        return self._seconds


def properties(
    envelope: Envelope,
    headers: dict[str, Any] | None = None,
    *,
    timestamps: Timestamps | None = None,
) -> pika.BasicProperties:
    """AMQP properties of a message: persistent JSON with Leveret's headers.

    Args:
        envelope: The message's metadata; its headers are sent, with ``x-leveret-attempt``.
        headers: Headers to send instead of the envelope's.
        timestamps: Converts the timestamp once for many envelopes sharing it.
    """
    return pika.BasicProperties(
        content_type=wire.CONTENT_TYPE,
        type=envelope.topic,
        message_id=envelope.message_id,
        correlation_id=envelope.correlation_id,
        timestamp=(
            timestamps.of(envelope)
            if timestamps is not None
            else int(envelope.timestamp.timestamp())
        ),
        delivery_mode=PERSISTENT,
        headers=headers if headers is not None else _headers_of(envelope),
    )


_FIRST_ATTEMPT_ONLY = MappingProxyType({wire.ATTEMPT: 1})
"""The headers of most new messages: shared, read only (pika only encodes them)."""


def _headers_of(envelope: Envelope) -> Mapping[str, Any]:
    if envelope.attempt == 1 and not envelope.headers:
        return _FIRST_ATTEMPT_ONLY
    return {**envelope.headers, wire.ATTEMPT: envelope.attempt}


def delivery(
    method: Basic.Deliver | Basic.GetOk, props: pika.BasicProperties, body: bytes
) -> Delivery:
    """A broker-independent `Delivery` from what pika hands a consumer, read defensively.

    Short strings that are not UTF-8 are decoded with replacement characters; a missing or
    empty ``message_id`` gets a fresh id (kept by the message's retries and dead letter);
    a ``timestamp`` in milliseconds, microseconds or nanoseconds is converted to seconds,
    and a nonsensical one dropped; header names become text. ``reply_to`` is kept as text
    (a worker answers only direct reply-to addresses).
    """
    return Delivery(
        body=bytes(body),
        topic=text(props.type) or text(method.routing_key),
        message_id=text(props.message_id) or "",
        correlation_id=text(props.correlation_id),
        timestamp=seconds_since_epoch(props.timestamp),
        headers=_headers(props.headers),
        redelivered=bool(method.redelivered),
        exchange=text(method.exchange) or "",
        routing_key=text(method.routing_key) or "",
        reply_to=text(props.reply_to),
    )


def republish_properties(
    item: Delivery, headers: dict[str, Any], *, reply_to: str | None = None
) -> pika.BasicProperties:
    """Properties of a message published again (retry, dead letter, replay): the original
    message's, with new headers.

    Args:
        item: The message published again.
        headers: Its new headers.
        reply_to: Where its answer goes: a retry of a request keeps the request's; a dead
            letter and a replay have none (a replayed request must not answer a caller
            long gone).
    """
    return pika.BasicProperties(
        content_type=wire.CONTENT_TYPE,
        type=item.topic,
        message_id=item.message_id,
        correlation_id=item.correlation_id,
        timestamp=item.timestamp,
        delivery_mode=PERSISTENT,
        headers=headers,
        reply_to=reply_to,
    )


def text(value: object) -> str | None:
    """A short-string field as text: None when absent or empty.

    Bytes (pika's form of a short string that is not UTF-8) are decoded with replacement
    characters, and the result is cut to fit AMQP's 255 bytes again.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or not value:
        return None
    if value.isascii() and len(value) <= SHORT_STRING_BYTES:
        return value
    return value.encode("utf-8", "replace")[:SHORT_STRING_BYTES].decode("utf-8", "ignore")


def _headers(raw: object) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        return {}
    return {(text(key) or "?"): value for key, value in raw.items()}


def encodable_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """`headers` with every value pika cannot encode replaced by its text.

    Headers copied from a foreign message onto a retry or dead letter are re-encoded by
    pika; a value it cannot encode would fail the publish. Only called when it did.
    """
    kept: dict[str, Any] = {}
    for key, value in headers.items():
        try:
            pika.data.encode_table([], {key: value})
        except Exception:  # noqa: BLE001  # any encoding failure: keep it as text instead
            value = repr(value)[:1000]
        kept[key] = value
    return kept
