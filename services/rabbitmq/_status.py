"""Internal: what `leveret status` reads over AMQP: recent heartbeats and queue figures.

Heartbeats reach the namespace's non-durable fanout exchange (`naming.heartbeats_exchange`);
a queue bound to it (`naming.status_queue`) keeps those of the last `HEARTBEAT_TTL_S`
seconds, at most `MAX_HEARTBEATS` and `MAX_BYTES` (the oldest go first), while anyone
looks: it expires `LISTENER_EXPIRES_S` after the last reader declared it, and then
heartbeats cost nothing again. A reader consumes every message without acknowledging and
closes its channel, which gives them all back in their places, so any number of readers,
one after the other, each see the whole minute in the order it arrived. Two reading at the
very same moment may each miss what the other holds.

Both reads are bounded: the heartbeats stream in on one consumer (not a round trip each:
20,000 took 7 to 21 s with ``basic.get``, 0.7 s so), and queue figures take one passive
declare each on a channel kept open while queues exist (a new channel only after a
missing one, which closes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from time import sleep

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from leveret.services.rabbitmq._admin import AdminChannel
from leveret.services.topology import naming
from leveret.services.transport import Inspection, QueueFigures

HEARTBEAT_TTL_S = 60
LISTENER_EXPIRES_S = 600
MAX_HEARTBEATS = 20_000
MAX_BYTES = 16 * 1024 * 1024
"""What the listener holds at most: a flood of large messages cannot exhaust a reader."""
READ_IDLE_S = 0.5
"""A read ends when no heartbeat came for this long (some of those counted expired)."""

# A classic queue, durable in name only: its messages are transient, and RabbitMQ deletes it
# when unused. Classic whatever the vhost's default queue type: getting and giving back every
# heartbeat counts as a delivery on a quorum queue, whose delivery limit (20 by default since
# RabbitMQ 4.0) would drop them. Durable because RabbitMQ 4 deprecates transient non-exclusive
# queues.
LISTENER_ARGUMENTS = {
    "x-queue-type": "classic",
    "x-message-ttl": HEARTBEAT_TTL_S * 1000,
    "x-expires": LISTENER_EXPIRES_S * 1000,
    "x-max-length": MAX_HEARTBEATS,
    "x-max-length-bytes": MAX_BYTES,
}


@dataclass(frozen=True, slots=True)
class RabbitInspection(Inspection):
    """The inspection role of the RabbitMQ transport: heartbeats and queue figures read
    over AMQP, each on a short-lived connection of its own.

    Attributes:
        url: The broker's AMQP URL.
        namespace: Whose heartbeats are read.
    """

    url: str = field(repr=False)  # holds credentials
    namespace: str

    def recent_heartbeats(self, first_wait_s: float) -> list[bytes]:
        return recent_heartbeats(self.url, self.namespace, first_wait_s)

    def queue_figures(self, queues: Sequence[str]) -> dict[str, QueueFigures]:
        return queue_figures(self.url, queues)


def recent_heartbeats(url: str, namespace: str, first_wait_s: float) -> list[bytes]:
    """The heartbeats of the last minute; waits `first_wait_s` when the listener is new."""
    exchange = naming.heartbeats_exchange(namespace)
    queue = naming.status_queue(namespace)
    with AdminChannel(url) as channel:
        new = not _exists(channel, queue)
        channel.exchange_declare(exchange, exchange_type="fanout", durable=False)
        _declare_listener(channel, queue)
        channel.queue_bind(queue, exchange)
        if new and first_wait_s > 0:
            sleep(first_wait_s)
        waiting = min(
            channel.queue_declare(queue, passive=True).method.message_count, MAX_HEARTBEATS
        )
        bodies: list[bytes] = []
        if waiting:
            # Never acknowledged: closing the channel (on leaving) gives every one back.
            for method, _properties, body in channel.consume(
                queue, auto_ack=False, inactivity_timeout=READ_IDLE_S
            ):
                if method is None:  # some expired meanwhile: nothing more comes
                    break
                bodies.append(body or b"")
                if len(bodies) >= waiting:
                    break
        return bodies


def queue_figures(url: str, queues: Sequence[str]) -> dict[str, QueueFigures]:
    """Ready messages and consumers of each queue that exists (passive declares)."""
    figures: dict[str, QueueFigures] = {}
    with AdminChannel(url) as channel:
        probe: BlockingChannel | None = None
        for queue in queues:
            if probe is None:
                probe = channel.connection.channel()
            try:
                ok = probe.queue_declare(queue, passive=True).method
            except pika.exceptions.ChannelClosedByBroker:
                probe = None  # no such queue: the broker closed the channel
                continue
            figures[queue] = QueueFigures(ready=ok.message_count, consumers=ok.consumer_count)
    return figures


def _declare_listener(channel: BlockingChannel, queue: str) -> None:
    """Declare the listener queue; one left with other arguments (by another version of
    Leveret, or by hand) is deleted and declared anew: it only holds recent heartbeats."""
    probe = channel.connection.channel()
    try:
        probe.queue_declare(queue, durable=True, arguments=LISTENER_ARGUMENTS)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != _PRECONDITION_FAILED:
            raise
        channel.queue_delete(queue)
        channel.queue_declare(queue, durable=True, arguments=LISTENER_ARGUMENTS)
        return
    probe.close()


_PRECONDITION_FAILED = 406


def _exists(channel: BlockingChannel, queue: str) -> bool:
    probe = channel.connection.channel()
    try:
        probe.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    probe.close()
    return True
