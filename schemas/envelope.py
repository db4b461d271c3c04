"""The envelope: metadata that travels with a message (see `leveret.schemas.wire`), and
how its fields are read from whatever a client sent."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

MAX_ATTEMPT = 2**31 - 1
"""The highest attempt number read from a header; larger values are read as this."""

# Timestamps are seconds since the epoch on the wire, but clients in other languages often
# send milliseconds (JavaScript's Date.now()), microseconds or nanoseconds. The unit is told
# by the size: below 10^11 (the year 5138) seconds, below 10^14 milliseconds, and so on.
_SECONDS_BOUND = 10**11
_DEADLINE_MIN_MS = 10**12  # September 2001: a smaller deadline is another unit, or nonsense
# A publish time more than this in the future is nonsense, whatever its unit.
_FUTURE_SLACK_S = 24 * 3600


def attempt_of(value: object) -> int:
    """The attempt number an ``x-leveret-attempt`` header value stands for.

    Any AMQP client can send any value: an integer (or a string of digits) is clamped to
    1 … `MAX_ATTEMPT`; anything else (missing, negative, a float, a bool, a table) reads as
    1, a first attempt.
    """
    if isinstance(value, bytes | str):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        value = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None
    if isinstance(value, bool) or not isinstance(value, int):
        return 1
    return min(max(value, 1), MAX_ATTEMPT)


def deadline_of(value: object) -> float | None:
    """The deadline an ``x-leveret-deadline`` header stands for, in seconds since the epoch.

    The header is whole milliseconds since the epoch (an integer, or a string of digits);
    anything else (missing, negative, a float, a bool, a table, a value before 2001 or past
    the year 5138) reads as None: no deadline.
    """
    if isinstance(value, bytes | str):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        value = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if not _DEADLINE_MIN_MS <= value < _SECONDS_BOUND * 1000:
        return None
    return value / 1000


def deadline_header(deadline_s: float) -> int:
    """The ``x-leveret-deadline`` header for a deadline in seconds since the epoch."""
    return int(deadline_s * 1000)


def seconds_since_epoch(value: object, *, now_s: float | None = None) -> int | None:
    """Whole seconds since the epoch from an AMQP ``timestamp`` property, or None.

    Seconds are the AMQP convention; milliseconds, microseconds and nanoseconds (what other
    clients often send) are recognised by their size and converted. A value that is not a
    non-negative integer, or that lands more than a day in the future, gives None.

    Args:
        value: The property as it arrived.
        now_s: The current time (`time.time()` by default).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    latest = (time.time() if now_s is None else now_s) + _FUTURE_SLACK_S
    for divisor in (1, 10**3, 10**6, 10**9):
        if value // divisor < _SECONDS_BOUND:
            seconds = value // divisor
            return seconds if seconds <= latest else None
    return None


class _RandomBytes(threading.local):
    """Each thread's unused random bytes for message ids (see `new_message_id`)."""

    generation = -1
    buffer = b""
    offset = 0


_ID_BYTES = 16
_IDS_PER_DRAW = 256
_random = _RandomBytes()
_generation = 0  # incremented in a forked child: its threads' bytes are its parent's too


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def new_message_id() -> str:
    """A fresh, globally unique message id: 32 hex characters, 128 random bits.

    Drawn from the OS's random source, as a UUID4's are, 256 ids' worth at a time per
    thread: one system call (and one chance for the GIL to change hands) per 256 messages
    instead of one per message, which a big `publish_many` felt. A forked child never
    reuses its parent's bytes.
    """
    pool = _random
    offset = pool.offset
    if offset >= len(pool.buffer) or pool.generation != _generation:
        pool.buffer = os.urandom(_ID_BYTES * _IDS_PER_DRAW)
        pool.generation = _generation
        offset = 0
    pool.offset = offset + _ID_BYTES
    return pool.buffer[offset : offset + _ID_BYTES].hex()


_NO_HEADERS: Mapping[str, Any] = MappingProxyType({})
"""The headers of a new message without any: one shared, read-only, empty mapping."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """Metadata of one message, as published or as received.

    Attributes:
        message_id: Unique id, stable across retries of the same message.
        topic: The message's topic (AMQP ``type``).
        correlation_id: Id shared by every message caused by one original message.
        timestamp: When the message was first published (UTC, whole seconds on the wire).
        attempt: 1 on the first delivery, incremented by each retry.
        headers: Every AMQP header that arrived, including Leveret's own.
        redelivered: True when the broker delivers it again after a consumer died.
    """

    message_id: str
    topic: str
    correlation_id: str | None = None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    attempt: int = 1
    headers: Mapping[str, Any] = field(default_factory=dict)
    redelivered: bool = False

    @classmethod
    def new(
        cls,
        topic: str,
        *,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> Envelope:
        """An envelope for a message published now for the first time.

        A new message with no correlation id starts its own chain: its correlation id is its
        message id. `headers` are sent with it (e.g. the trace context). `timestamp`: now,
        unless a batch gives its own (one clock reading for every message of it).
        """
        message_id = new_message_id()
        if cls is not Envelope:  # a subclass may have fields of its own
            return cls(
                message_id=message_id,
                topic=topic,
                headers=headers if headers is not None else _NO_HEADERS,
                correlation_id=correlation_id or message_id,
                timestamp=timestamp if timestamp is not None else datetime.now(UTC),
            )
        # One per published message (a big publish_many makes tens of thousands): set the
        # slots directly, half the cost of a frozen dataclass's __init__.
        envelope = _new_object(Envelope)
        _set_message_id(envelope, message_id)
        _set_topic(envelope, topic)
        _set_correlation_id(envelope, correlation_id or message_id)
        _set_timestamp(envelope, timestamp if timestamp is not None else datetime.now(UTC))
        _set_attempt(envelope, 1)
        _set_headers(envelope, headers if headers is not None else _NO_HEADERS)
        _set_redelivered(envelope, False)
        return envelope


_new_object = object.__new__
_FIELDS = (
    "message_id",
    "topic",
    "correlation_id",
    "timestamp",
    "attempt",
    "headers",
    "redelivered",
)
if tuple(item.name for item in fields(Envelope)) != _FIELDS:  # pragma: no cover
    raise AssertionError("Envelope.new sets every field of Envelope by name: update it")
(
    _set_message_id,
    _set_topic,
    _set_correlation_id,
    _set_timestamp,
    _set_attempt,
    _set_headers,
    _set_redelivered,
) = (vars(Envelope)[name].__set__ for name in _FIELDS)
