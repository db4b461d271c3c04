"""The RabbitMQ objects an actor needs, as data.

`steps(namespace, actors)` is pure (unit-tested); `leveret.services.rabbitmq` declares the steps on
a channel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from leveret.actors.actor import Actor
from leveret.services import delays, naming

StepKind = Literal["exchange", "queue", "bind", "bind_exchange"]


@dataclass(frozen=True, slots=True)
class Step:
    """One idempotent declaration.

    Attributes:
        kind: ``exchange``, ``queue``, ``bind`` (a queue to an exchange) or
            ``bind_exchange`` (an exchange to an exchange).
        name: Exchange or queue name (for bindings: the destination).
        exchange_type: For exchanges: ``topic`` or ``direct``.
        arguments: ``x-`` arguments of a queue.
        exchange: For bindings: the exchange bound from.
        routing_key: For bindings: the binding key.
    """

    kind: StepKind
    name: str
    exchange_type: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    exchange: str = ""
    routing_key: str = ""

    def describe(self) -> str:
        """A one-line description for errors and logs."""
        if self.kind in ("bind", "bind_exchange"):
            return f"binding {self.exchange} -[{self.routing_key}]-> {self.name}"
        if self.kind == "exchange":
            return f"{self.exchange_type} exchange {self.name}"
        return f"queue {self.name} {self.arguments}"


def namespace_steps(namespace: str) -> list[Step]:
    """The exchanges every namespace has."""
    return [
        Step("exchange", naming.events_exchange(namespace), exchange_type="topic"),
        Step("exchange", naming.dead_exchange(namespace), exchange_type="direct"),
    ]


def actor_steps(namespace: str, actor: type[Actor]) -> list[Step]:
    """The queues and bindings of one actor: its queue, its `.dlq`, a binding per topic, and
    the bindings that bring its delayed messages home (the delay levels must exist)."""
    queue = naming.queue_name(namespace, actor.queue)
    dlq = naming.dlq_name(namespace, actor.queue)
    dead = naming.dead_exchange(namespace)
    queue_args: dict[str, Any] = {
        "x-queue-type": actor.queue_type,
        "x-dead-letter-exchange": dead,
        "x-dead-letter-routing-key": dlq,
    }
    if actor.queue_type == "quorum":
        queue_args["x-delivery-limit"] = actor.delivery_limit
    steps = [
        Step("queue", dlq, arguments={"x-queue-type": actor.queue_type}),
        Step("bind", dlq, exchange=dead, routing_key=dlq),
        Step("queue", queue, arguments=queue_args),
    ]
    events = naming.events_exchange(namespace)
    steps += [Step("bind", queue, exchange=events, routing_key=topic) for topic in actor.topics()]
    return steps + actor_delivery_steps(namespace, actor)


def _level_exchange(namespace: str, level: int) -> str:
    """Level `level`'s exchange; level -1 is the delivery exchange."""
    if level < 0:
        return naming.delay_deliver_exchange(namespace)
    return naming.delay_exchange(namespace, level)


def level_steps(namespace: str) -> list[Step]:
    """The delay levels of a namespace: exchanges, TTL queues and the bindings between them."""
    steps = [Step("exchange", naming.delay_deliver_exchange(namespace), exchange_type="topic")]
    for level in range(delays.LEVELS):
        steps.append(Step("exchange", _level_exchange(namespace, level), exchange_type="topic"))
    for level in range(delays.LEVELS):
        position = delays.LEVELS - 1 - level
        waiting = naming.delay_queue(namespace, level)
        below = _level_exchange(namespace, level - 1)
        here = _level_exchange(namespace, level)
        steps += [
            Step(
                "queue",
                waiting,
                arguments={
                    "x-queue-type": "classic",
                    "x-message-ttl": 2**level * 1000,
                    "x-dead-letter-exchange": below,
                },
            ),
            Step("bind", waiting, exchange=here, routing_key="*." * position + "1.#"),
            Step("bind_exchange", below, exchange=here, routing_key="*." * position + "0.#"),
        ]
    return steps


def actor_delivery_steps(namespace: str, actor: type[Actor]) -> list[Step]:
    """Bindings that bring an actor's delayed messages (by queue and by topic) home."""
    queue = naming.queue_name(namespace, actor.queue)
    deliver = naming.delay_deliver_exchange(namespace)
    steps = [
        Step("bind", queue, exchange=deliver, routing_key=f"{delays.ANY_DELAY}q.{actor.queue}")
    ]
    steps += [
        Step("bind", queue, exchange=deliver, routing_key=f"{delays.ANY_DELAY}t.{topic}")
        for topic in actor.topics()
    ]
    return steps


def steps(
    namespace: str, actors: Iterable[type[Actor]], *, with_delay_levels: bool = True
) -> list[Step]:
    """Every declaration for a namespace and these actors, in a safe order.

    Args:
        namespace: The namespace.
        actors: The actors.
        with_delay_levels: Include the namespace's delay levels (declared once is enough).
    """
    result = namespace_steps(namespace)
    if with_delay_levels:
        result += level_steps(namespace)
    for actor in actors:
        result += actor_steps(namespace, actor)
    return result


def queue_names(namespace: str, actors: Iterable[type[Actor]]) -> list[str]:
    """Every queue the actors own in the namespace (actor queues and dead-letter queues)."""
    names: list[str] = []
    for actor in actors:
        names += [
            naming.queue_name(namespace, actor.queue),
            naming.dlq_name(namespace, actor.queue),
        ]
    return names
