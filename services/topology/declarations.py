"""The RabbitMQ objects an actor needs, as data.

`steps(namespace, actors)` is pure (unit-tested); `leveret.services.rabbitmq` declares the steps on
a channel.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from leveret.actors.actor import Actor
from leveret.services.topology import delays, naming
from leveret.services.topology.delays import DelayQueues

StepKind = Literal["exchange", "queue", "bind", "bind_exchange"]


@dataclass(frozen=True, slots=True)
class Step:
    """One idempotent declaration.

    Attributes:
        kind: ``exchange``, ``queue``, ``bind`` (a queue to an exchange) or
            ``bind_exchange`` (an exchange to an exchange).
        name: Exchange or queue name (for bindings: the destination).
        exchange_type: For exchanges: ``topic``, ``direct`` or ``fanout``.
        arguments: Arguments of a queue (``x-queue-type``…) or exchange
            (``alternate-exchange``).
        exchange: For bindings: the exchange bound from.
        routing_key: For bindings: the binding key.
        legacy_arguments: For queues: the arguments an earlier Leveret declared the queue
            with. A queue that already exists with these is used as it is (RabbitMQ cannot
            change a queue's arguments), and a warning says what it lacks and how to fix it.
    """

    kind: StepKind
    name: str
    exchange_type: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    exchange: str = ""
    routing_key: str = ""
    legacy_arguments: dict[str, Any] | None = None

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


AT_LEAST_ONCE_DEAD_LETTERING = {
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}
"""What a quorum queue needs to dead-letter at least once (RabbitMQ 3.10+): it keeps each
dead letter until the target queue has confirmed it, instead of sending it once and
forgetting it (lost if the target has no leader at that moment). ``reject-publish`` is
required by that strategy; actor queues have no length limit, so it changes nothing else."""


def at_least_once_policy_command(queue: str) -> str:
    """The ``rabbitmqctl`` command that gives `queue` (a quorum actor queue declared by
    Leveret 0.1) `AT_LEAST_ONCE_DEAD_LETTERING` by a policy of its own."""
    definition = {
        key.removeprefix("x-"): value for key, value in AT_LEAST_ONCE_DEAD_LETTERING.items()
    }
    return (
        f"rabbitmqctl set_policy {shlex.quote('leveret-' + queue)} "
        f"{shlex.quote('^' + re.escape(queue) + '$')} "
        f"{shlex.quote(json.dumps(definition, separators=(',', ':')))} --apply-to queues"
    )


def actor_steps(namespace: str, actor: type[Actor]) -> list[Step]:
    """The queues and bindings of one actor: its queue, its `.dlq`, a binding per topic, and
    the bindings that bring its delayed messages home (the delay levels must exist).

    A quorum actor queue dead-letters into its `.dlq` at least once (a message past its
    delivery limit, or rejected by a worker that cannot read it). Queues that Leveret 0.1
    declared without that are still accepted (see `Step.legacy_arguments`)."""
    queue = naming.queue_name(namespace, actor.queue)
    dlq = naming.dlq_name(namespace, actor.queue)
    dead = naming.dead_exchange(namespace)
    queue_args: dict[str, Any] = {
        "x-queue-type": actor.queue_type,
        "x-dead-letter-exchange": dead,
        "x-dead-letter-routing-key": dlq,
    }
    legacy_args = None
    if actor.queue_type == "quorum":
        queue_args["x-delivery-limit"] = actor.delivery_limit
        legacy_args = dict(queue_args)
        queue_args.update(AT_LEAST_ONCE_DEAD_LETTERING)
    steps = [
        Step("queue", dlq, arguments={"x-queue-type": actor.queue_type}),
        Step("bind", dlq, exchange=dead, routing_key=dlq),
        Step("queue", queue, arguments=queue_args, legacy_arguments=legacy_args),
    ]
    events = naming.events_exchange(namespace)
    steps += [Step("bind", queue, exchange=events, routing_key=topic) for topic in actor.topics()]
    return steps + actor_delivery_steps(namespace, actor)


def _level_exchange(namespace: str, level: int, queues: DelayQueues) -> str:
    """Level `level`'s exchange; level -1 is the delivery exchange."""
    if level < 0:
        return naming.delay_deliver_exchange(namespace, queues)
    return naming.delay_exchange(namespace, level, queues)


UNROUTED_MAX_LENGTH = 10_000
"""Delayed messages no queue took, kept for an operator to see (the oldest dropped first)."""


def level_steps(namespace: str, queues: DelayQueues = "classic") -> list[Step]:
    """The delay levels of a namespace: exchanges, TTL queues and the bindings between them.

    Both ladders (classic and quorum) end in a delivery exchange of their own that actor
    queues are bound to, so a namespace may switch from one to the other while messages
    wait: those already in a ladder go on through it.

    ``quorum`` levels are replicated quorum queues that pass messages on with
    at-least-once dead-lettering (RabbitMQ 3.10+: ``reject-publish`` overflow, which is
    what it needs; nothing else is limited). A message whose delay is over but that no
    queue takes (its actor's queue was deleted, nobody subscribes to its topic) would then
    be retried by the broker forever and stall the levels behind it, so their delivery
    exchange has an alternate exchange: such messages go to the ``{ns}.delay.unrouted``
    queue, its oldest dropped past `UNROUTED_MAX_LENGTH`. Classic levels drop them.
    """
    steps = [
        Step(
            "exchange", naming.delay_deliver_exchange(namespace, "classic"), exchange_type="topic"
        ),
        Step(
            "exchange",
            naming.delay_deliver_exchange(namespace, "quorum"),
            exchange_type="topic",
            arguments={"alternate-exchange": naming.delay_unrouted(namespace)},
        ),
    ]
    level_arguments: dict[str, Any] = {"x-queue-type": "classic"}
    if queues == "quorum":
        unrouted = naming.delay_unrouted(namespace)
        steps += [
            Step("exchange", unrouted, exchange_type="fanout"),
            Step(
                "queue",
                unrouted,
                arguments={
                    "x-queue-type": "quorum",
                    "x-max-length": UNROUTED_MAX_LENGTH,
                    "x-overflow": "drop-head",
                },
            ),
            Step("bind", unrouted, exchange=unrouted, routing_key=""),
        ]
        level_arguments = {"x-queue-type": "quorum", **AT_LEAST_ONCE_DEAD_LETTERING}
    for level in range(delays.LEVELS):
        steps.append(
            Step("exchange", _level_exchange(namespace, level, queues), exchange_type="topic")
        )
    for level in range(delays.LEVELS):
        position = delays.LEVELS - 1 - level
        waiting = naming.delay_queue(namespace, level, queues)
        below = _level_exchange(namespace, level - 1, queues)
        here = _level_exchange(namespace, level, queues)
        steps += [
            Step(
                "queue",
                waiting,
                arguments={
                    **level_arguments,
                    "x-message-ttl": 2**level * 1000,
                    "x-dead-letter-exchange": below,
                },
            ),
            Step("bind", waiting, exchange=here, routing_key="*." * position + "1.#"),
            Step("bind_exchange", below, exchange=here, routing_key="*." * position + "0.#"),
        ]
    return steps


def actor_delivery_steps(namespace: str, actor: type[Actor]) -> list[Step]:
    """Bindings that bring an actor's delayed messages (by queue and by topic) home, from
    either ladder's delivery exchange (both are declared with the levels)."""
    queue = naming.queue_name(namespace, actor.queue)
    steps = []
    for deliver in (
        naming.delay_deliver_exchange(namespace, "classic"),
        naming.delay_deliver_exchange(namespace, "quorum"),
    ):
        steps.append(
            Step("bind", queue, exchange=deliver, routing_key=f"{delays.ANY_DELAY}q.{actor.queue}")
        )
        steps += [
            Step("bind", queue, exchange=deliver, routing_key=f"{delays.ANY_DELAY}t.{topic}")
            for topic in actor.topics()
        ]
    return steps


def steps(
    namespace: str,
    actors: Iterable[type[Actor]],
    *,
    with_delay_levels: bool = True,
    delay_queues: DelayQueues = "classic",
) -> list[Step]:
    """Every declaration for a namespace and these actors, in a safe order.

    Args:
        namespace: The namespace.
        actors: The actors.
        with_delay_levels: Include the namespace's delay levels (declared once is enough).
        delay_queues: Which delay levels: ``classic`` or ``quorum``.
    """
    result = namespace_steps(namespace)
    if with_delay_levels:
        result += level_steps(namespace, delay_queues)
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
