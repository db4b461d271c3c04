"""Internal: one pass over a RabbitMQ dead-letter queue, for browsing and replaying it safely.

RabbitMQ has no way to read a queue without taking messages out of it. Taking a dead
letter and giving it back (``basic.get`` without ack, then closing) counts as a failed
delivery on a quorum queue, and since RabbitMQ 4.0 quorum queues have a delivery limit of
20 by default: about twenty ``leveret dlq list`` would make the broker drop every letter
(the ``.dlq`` has nowhere to dead-letter them to). So a pass never gives a letter back.

Instead, it takes the letters that were in the queue when it began, once each, and in one
AMQP transaction per batch either publishes a letter to the actor's queue (a replay) or
publishes it, unchanged, to the back of the dead-letter queue, and acks it. After a pass
every letter kept is in the queue in the same order, with the same properties, headers and
body, and a fresh delivery count. A pass interrupted anywhere loses and doubles nothing:
an uncommitted batch goes back whole. Letters dead-lettered during a pass queue up behind
the ones it visits, so a pass always ends, however fast a failing handler refills the queue.

Two passes on one queue at once would see each other's letters: `dlq_lock` (an exclusive
queue, which RabbitMQ gives to one connection at a time) makes a second one fail fast.
"""

from __future__ import annotations

from collections.abc import Callable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from leveret.schemas.errors import TopologyError
from leveret.services.deadletters import replayed
from leveret.services.rabbitmq import _properties as wire_properties
from leveret.services.runtime.execution import Delivery

BATCH = 200
"""Letters per transaction (and prefetched at once)."""

IDLE_TIMEOUT_S = 5.0
"""A pass that receives nothing for this long stops: the rest is gone (purged meanwhile)."""

# Counters RabbitMQ adds to every delivery of a quorum queue: a letter put back is a new
# message, whose count starts again.
_DELIVERY_COUNTERS = ("x-delivery-count", "x-acquired-count")

Visit = Callable[[Delivery], bool]
"""Called with each letter; True moves it to the actor's queue (a replay), False keeps it."""


def dlq_lock(connection: BlockingConnection, dlq: str) -> BlockingChannel:
    """Hold the lock of the dead-letter queue `dlq` for the life of `connection`.

    Returns:
        The channel that holds it (closing the connection releases it).

    Raises:
        TopologyError: Another connection holds it: a dead-letter operation on the same
            queue is running.
    """
    channel = connection.channel()
    name = f"{dlq}.lock"
    try:
        channel.queue_declare(
            name, exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
        )
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 405:  # RESOURCE_LOCKED
            raise TopologyError(
                f"another dead-letter operation on {dlq} is running (list, show, replay); "
                "try again once it has finished"
            ) from exc
        raise
    return channel


def run_pass(
    channel: BlockingChannel,
    dlq: str,
    visit: Visit,
    *,
    queue: str | None = None,
    on_moved: Callable[[Delivery], None] | None = None,
) -> int:
    """Visit each letter present in `dlq` now, once; move those `visit` picks to `queue`.

    Args:
        channel: A blocking channel (put in transaction mode here).
        dlq: The dead-letter queue's full name.
        visit: Says for each letter whether to move it (see `Visit`).
        queue: The actor's queue (full name), where moved letters go as replays: same id,
            topic, correlation id and body, attempt reset. Required if `visit` may say True.
        on_moved: Called with each moved letter once its batch is committed.

    Returns:
        How many letters were moved.
    """
    left = int(channel.queue_declare(dlq, passive=True).method.message_count)
    if left == 0:
        return 0
    channel.tx_select()
    # The prefetch window never exceeds what is left to visit, so the broker never hands
    # over a letter this pass would not visit (giving it back would count as a failed
    # delivery). Before each commit frees the window it is set again to what is left.
    channel.basic_qos(prefetch_count=min(BATCH, left))
    moved: list[Delivery] = []
    received = 0
    total = 0

    def commit() -> None:
        nonlocal moved, received, total
        if left:
            channel.basic_qos(prefetch_count=min(BATCH, left))
        else:
            channel.cancel()  # nothing more to visit: nothing more may come
        channel.tx_commit()
        total += len(moved)
        if on_moved is not None:
            for letter in moved:
                on_moved(letter)
        moved, received = [], 0

    for method, props, body in channel.consume(dlq, inactivity_timeout=IDLE_TIMEOUT_S):
        if method is None or props is None or body is None or method.delivery_tag is None:
            left = 0  # fewer letters than counted: the queue was purged meanwhile
            commit()
            break
        letter = wire_properties.delivery(method, props, body)
        move = visit(letter)
        if move:
            if queue is None:
                raise ValueError("a pass that moves letters needs the actor's queue")
            again = replayed(letter)
            channel.basic_publish(
                "", queue, body, wire_properties.republish_properties(letter, dict(again.headers))
            )
            moved.append(letter)
        else:
            channel.basic_publish("", dlq, body, _unchanged(props))
        channel.basic_ack(method.delivery_tag)
        received += 1
        left -= 1
        # A replayed letter is committed at once (an interrupted replay loses at most
        # that one's progress); letters kept are committed a batch at a time.
        if left == 0 or move or received == BATCH:
            commit()
        if left == 0:
            break
    return total


def _unchanged(props: pika.BasicProperties) -> pika.BasicProperties:
    """The letter's own properties, without the broker's per-delivery counters."""
    headers = props.headers
    if headers and any(key in headers for key in _DELIVERY_COUNTERS):
        props.headers = {k: v for k, v in headers.items() if k not in _DELIVERY_COUNTERS}
    return props
