"""Where a message goes: the exchange and routing key of a publish, a retry, a dead letter.

Both brokers ask here, so that a message sent to an actor, fanned out by topic, retried,
delayed or dead-lettered goes to the same place on RabbitMQ and in memory. The names come
from `naming`, the delay keys from `delays`::

    a send to "billing"              ("", "shop.billing")
    a publish of "orders.placed"     ("shop.events", "orders.placed")
    either, delayed 5 s              ("shop.delay.27", "0.0.….1.0.1.q.billing")
    a retry of "billing" (5 s later) the same as a delayed send to "billing"
    a dead letter of "billing"       ("", "shop.billing.dlq")

Queue names given here are actors' queue names without the namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

from leveret.services.topology import delays, naming
from leveret.services.topology.delays import DelayQueues


@dataclass(frozen=True, slots=True)
class Address:
    """Where one message is published: an exchange (``""``: the default exchange, straight
    to the queue the routing key names) and a routing key."""

    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Addresses:
    """The addresses of one namespace.

    Attributes:
        namespace: Prefix of every exchange and queue.
        delay_queues: Which delay levels delayed messages enter (``classic`` or ``quorum``).
    """

    namespace: str
    delay_queues: DelayQueues = "classic"

    def queue(self, queue: str) -> Address:
        """Straight to an actor's queue."""
        return Address("", naming.queue_name(self.namespace, queue))

    def topic(self, topic: str) -> Address:
        """To every actor queue bound to `topic` (the events exchange)."""
        return Address(naming.events_exchange(self.namespace), topic)

    def delayed(
        self, delay_s: int, *, queue: str | None = None, topic: str | None = None
    ) -> Address:
        """Into the delay levels, bound for `queue` or `topic` once `delay_s` seconds pass.

        Raises:
            InvalidArgument: The delay is out of range, or not exactly one of queue/topic
                is given.
        """
        exchange = naming.delay_exchange(self.namespace, delays.LEVELS - 1, self.delay_queues)
        return Address(exchange, delays.routing_key(delay_s, queue=queue, topic=topic))

    def publish(self, *, queue: str | None, topic: str, delay_s: int = 0) -> Address:
        """A new message: to `queue` when given (a send), else fanned out by `topic`;
        through the delay levels when `delay_s` is over 0."""
        if delay_s > 0:
            return self.delayed(delay_s, queue=queue, topic=topic if queue is None else None)
        return self.topic(topic) if queue is None else self.queue(queue)

    def retry(self, queue: str, delay_s: int = 0) -> Address:
        """A retry of a message of `queue`: back to that queue only, through the delay levels
        when `delay_s` is over 0."""
        return self.delayed(delay_s, queue=queue) if delay_s > 0 else self.queue(queue)

    def dead_letter(self, queue: str) -> Address:
        """A dead letter of a message of `queue`: its dead-letter queue."""
        return Address("", naming.dlq_name(self.namespace, queue))
