"""Names of exchanges and queues, and the declarations an actor needs."""

from __future__ import annotations

import pytest

from leveret.actors import Actor, handler
from leveret.schemas import Message
from leveret.services import naming, topology


class Paid(Message, topic="tests.topo.paid"):
    n: int


class Refunded(Message, topic="tests.topo.refunded"):
    n: int


class Ledger(Actor, queue="ledger", delivery_limit=7):
    @handler
    def paid(self, msg: Paid) -> None: ...

    @handler
    def refunded(self, msg: Refunded) -> None: ...


class Classic(Actor, queue="classic", queue_type="classic"):
    @handler
    def paid(self, msg: Paid) -> None: ...


def test_names_are_prefixed_by_namespace() -> None:
    assert naming.events_exchange("shop") == "shop.events"
    assert naming.dead_exchange("shop") == "shop.dead"
    assert naming.queue_name("shop", "billing") == "shop.billing"
    assert naming.dlq_name("shop", "billing") == "shop.billing.dlq"


@pytest.mark.parametrize("bad", ["", "a b", "x/y", "a..b", "q*"])
def test_invalid_namespace_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid namespace"):
        naming.check_namespace(bad)


def test_actor_steps_declare_dlq_queue_bindings_per_topic_and_for_delays() -> None:
    steps = topology.actor_steps("shop", Ledger)
    assert [step.describe() for step in steps] == [
        "queue shop.ledger.dlq {'x-queue-type': 'quorum'}",
        "binding shop.dead -[shop.ledger.dlq]-> shop.ledger.dlq",
        "queue shop.ledger {'x-queue-type': 'quorum', 'x-dead-letter-exchange': 'shop.dead', "
        "'x-dead-letter-routing-key': 'shop.ledger.dlq', 'x-delivery-limit': 7, "
        "'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish'}",
        "binding shop.events -[tests.topo.paid]-> shop.ledger",
        "binding shop.events -[tests.topo.refunded]-> shop.ledger",
        "binding shop.delay.deliver -[" + "*." * 28 + "q.ledger]-> shop.ledger",
        "binding shop.delay.deliver -[" + "*." * 28 + "t.tests.topo.paid]-> shop.ledger",
        "binding shop.delay.deliver -[" + "*." * 28 + "t.tests.topo.refunded]-> shop.ledger",
        "binding shop.delay.quorum.deliver -[" + "*." * 28 + "q.ledger]-> shop.ledger",
        "binding shop.delay.quorum.deliver -[" + "*." * 28 + "t.tests.topo.paid]-> shop.ledger",
        "binding shop.delay.quorum.deliver -[" + "*." * 28 + "t.tests.topo.refunded]-> shop.ledger",
    ]


def test_classic_queues_have_no_delivery_limit() -> None:
    queue_step = topology.actor_steps("shop", Classic)[2]
    assert queue_step.arguments["x-queue-type"] == "classic"
    assert "x-delivery-limit" not in queue_step.arguments
    assert "x-dead-letter-strategy" not in queue_step.arguments  # quorum queues only
    assert queue_step.legacy_arguments is None


def test_a_quorum_actor_queue_of_leveret_0_1_is_its_arguments_without_at_least_once() -> None:
    queue_step = topology.actor_steps("shop", Ledger)[2]
    assert queue_step.legacy_arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "shop.dead",
        "x-dead-letter-routing-key": "shop.ledger.dlq",
        "x-delivery-limit": 7,
    }
    assert queue_step.arguments == {
        **queue_step.legacy_arguments,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_namespace_exchanges_come_first() -> None:
    steps = topology.steps("shop", [Ledger])
    assert [(s.kind, s.name, s.exchange_type) for s in steps[:2]] == [
        ("exchange", "shop.events", "topic"),
        ("exchange", "shop.dead", "direct"),
    ]


def test_the_longest_names_fit_amqps_255_bytes_everywhere() -> None:
    """The longest namespace, queue and topic accepted at definition: every queue name,
    routing key and binding key built from them fits AMQP's short strings (255 bytes), a
    delayed message's included."""
    from leveret.actors import Actor, handler
    from leveret.actors.actor import MAX_QUEUE_BYTES
    from leveret.schemas import Message
    from leveret.schemas.message import MAX_TOPIC_BYTES
    from leveret.services import delays

    namespace = naming.check_namespace("n" * 80)

    class Longest(Message, topic="x" * MAX_TOPIC_BYTES):
        n: int

    class Widest(Actor, queue="q" * MAX_QUEUE_BYTES):
        @handler
        def on(self, msg: Longest) -> None: ...

    every = topology.steps(namespace, [Widest]) + topology.level_steps(namespace, "quorum")
    keys = [step.name for step in every] + [step.routing_key for step in every]
    keys += [
        delays.routing_key(delays.MAX_DELAY_S, queue=Widest.queue),
        delays.routing_key(delays.MAX_DELAY_S, topic=Longest.topic()),
    ]
    assert max(len(key.encode()) for key in keys) <= 255
