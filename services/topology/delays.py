"""Durable delays inside RabbitMQ: 28 levels of TTL queues, the delay written in binary.

A delay of d seconds travels in the routing key as its 28 bits, most significant first,
followed by where the message goes when the delay is over::

    0.0.….1.0.1.q.billing        (5 s, then to the actor queue "billing")
    0.0.….0.1.1.t.orders.placed  (3 s, then published under the topic "orders.placed")

The message enters at level 27's exchange. Level n's exchange routes a key whose bit n is 1
into level n's queue, whose messages all wait 2^n s (one TTL per queue, so none waits behind
another) and are then dead-lettered into level n-1's exchange; a key whose bit n is 0 goes
straight on to level n-1. After level 0 the message reaches ``{ns}.delay.deliver``, where
actor queues are bound by ``*.*.….q.{queue}`` and ``*.*.….t.{topic}`` (28 stars). The path
through the levels therefore sums to exactly d seconds; the key never grows, however often a
message is delayed again; and nothing is held by a consumer.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Literal

from leveret.schemas.errors import InvalidArgument

DelayQueues = Literal["classic", "quorum"]
"""The queue type of a namespace's delay levels: ``classic`` (one node, cheapest) or
``quorum`` (replicated on a cluster, at-least-once between levels)."""
DELAY_QUEUES_ENV = "LEVERET_DELAY_QUEUES"

LEVELS = 28
MAX_DELAY_S = 2**LEVELS - 1
ANY_DELAY = "*." * LEVELS
"""The binding-key prefix that matches any delay."""


def delay_seconds(
    delay: float | timedelta | None = None, eta: datetime | None = None, *, now: datetime
) -> int:
    """Whole seconds to wait, rounded up so that nothing arrives before it was asked to.

    Args:
        delay: Seconds, or a `timedelta`.
        eta: An aware `datetime` to deliver at (instead of `delay`).
        now: The current time (aware), for `eta`.

    Returns:
        0 for no delay, else 1 … `MAX_DELAY_S`.

    Raises:
        InvalidArgument: Both or a negative delay, a naive `eta`, or more than `MAX_DELAY_S`.
    """
    if delay is not None and eta is not None:
        raise InvalidArgument("give delay or eta, not both")
    if eta is not None:
        if eta.tzinfo is None:
            raise InvalidArgument("eta must be timezone-aware (e.g. datetime.now(UTC) + ...)")
        seconds = (eta - now).total_seconds()
        seconds = max(seconds, 0.0)
    elif isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    else:
        seconds = float(delay or 0)
    if seconds < 0 or math.isnan(seconds):
        raise InvalidArgument(f"delay must be zero or positive, not {seconds}")
    whole = math.ceil(seconds)
    if whole > MAX_DELAY_S:
        raise InvalidArgument(f"delay of {whole} s is longer than the maximum {MAX_DELAY_S} s")
    return whole


def routing_key(delay_s: int, *, queue: str | None = None, topic: str | None = None) -> str:
    """The routing key of a message delayed `delay_s` seconds, bound for a queue or a topic.

    Raises:
        InvalidArgument: The delay is out of range, or not exactly one of queue/topic is given.
    """
    if not 0 <= delay_s <= MAX_DELAY_S:
        raise InvalidArgument(f"delay must be 0 … {MAX_DELAY_S} s, not {delay_s}")
    if (queue is None) == (topic is None):
        raise InvalidArgument("give exactly one of queue or topic")
    bits = ".".join(format(delay_s, f"0{LEVELS}b"))
    return f"{bits}.q.{queue}" if queue is not None else f"{bits}.t.{topic}"


def destination(key: str) -> tuple[Literal["queue", "topic"], str] | None:
    """Where a delayed message's routing key sends it when its delay is over: ``("queue",
    name)`` (an actor's queue, without namespace) or ``("topic", topic)``; None for a key
    that is not a delay key."""
    parts = key.split(".", LEVELS)
    if len(parts) != LEVELS + 1 or any(bit not in ("0", "1") for bit in parts[:LEVELS]):
        return None
    kind, _, name = parts[LEVELS].partition(".")
    if not name or kind not in ("q", "t"):
        return None
    return ("queue" if kind == "q" else "topic"), name


def levels_waited(key: str) -> list[int]:
    """The levels whose queue a message with this routing key waits in, highest first."""
    bits = key.split(".")[:LEVELS]
    return [LEVELS - 1 - position for position, bit in enumerate(bits) if bit == "1"]
