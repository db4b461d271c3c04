"""Names of exchanges and queues, and the declarations an actor needs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leveret.actors import Actor, handler
from leveret.actors.actor import MAX_QUEUE_BYTES
from leveret.schemas import Message
from leveret.schemas.errors import ConfigurationError, DefinitionError, NotFound
from leveret.schemas.message import MAX_TOPIC_BYTES
from leveret.services import RabbitBroker
from leveret.services.topology import declarations as topology
from leveret.services.topology import delays, naming
from tests.support import ROOT


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


# Names against AMQP's 255-byte short strings (issue 24.14) ---------------------------

_WORD = r"[A-Za-z0-9_-]{1,60}"
names = st.from_regex(rf"{_WORD}(\.{_WORD}){{0,4}}", fullmatch=True)

_DELAY_PREFIX = len(delays.routing_key(0, queue=""))
"""Bytes before the queue in a delayed message's routing key: 28 delay bits and ``q.``."""


class LongestTopic(Message, topic="x" * MAX_TOPIC_BYTES):
    n: int


def _actor(queue: str) -> type[Actor]:
    class Named(Actor, queue=queue):
        @handler
        def on(self, msg: LongestTopic) -> None: ...

    return Named


def _derived(namespace: str, actor: type[Actor]) -> list[str]:
    """Every name and key Leveret derives from a namespace and an actor."""
    every = topology.steps(namespace, [actor]) + topology.level_steps(namespace, "quorum")
    names = [step.name for step in every] + [step.exchange for step in every]
    names += [step.routing_key for step in every]
    names += [
        naming.dlq_lock(namespace, actor.queue),
        naming.scheduler_lock(namespace),
        naming.scheduler_state(namespace),
        naming.heartbeats_exchange(namespace),
        naming.status_queue(namespace),
        delays.routing_key(delays.MAX_DELAY_S, queue=actor.queue),
        delays.routing_key(delays.MAX_DELAY_S, topic=LongestTopic.topic()),
    ]
    return names


def _too_long(names: list[str]) -> list[str]:
    return [name for name in names if len(name.encode()) > naming.SHORT_STRING_BYTES]


@settings(max_examples=300, deadline=None)
@given(namespace=names.filter(lambda n: len(n) <= 80), queue=names)
def test_every_derived_name_fits_or_the_checks_say_which_does_not(
    namespace: str, queue: str
) -> None:
    """Any namespace and queue name: the actor's definition and the broker's check accept
    them exactly when every name Leveret derives fits AMQP's 255 bytes, and a refusal says
    which name is too long, by how many bytes, and what to shorten."""
    naming.check_namespace(namespace)
    actor_only = _DELAY_PREFIX + len(queue.encode())  # the delay binding key of the queue
    if actor_only > naming.SHORT_STRING_BYTES:
        with pytest.raises(DefinitionError) as refused:
            _actor(queue)
        over = actor_only - naming.SHORT_STRING_BYTES
        assert f"{over} bytes over" in str(refused.value)
        assert "shorten the queue name" in str(refused.value)
        return
    actor = _actor(queue)
    too_long = _too_long(_derived(namespace, actor))
    if not too_long:
        naming.check_queue(namespace, queue)
        return
    with pytest.raises(ConfigurationError) as too_long_together:
        naming.check_queue(namespace, queue)
    longest = max(too_long, key=lambda name: len(name.encode()))
    over = len(longest.encode()) - naming.SHORT_STRING_BYTES
    assert longest == naming.dlq_lock(namespace, queue)
    assert f"{over} bytes over" in str(too_long_together.value)
    assert "shorten the namespace or the queue name" in str(too_long_together.value)


def test_the_longest_names_fit_amqps_255_bytes_everywhere() -> None:
    """The longest namespace, queue and topic accepted at definition: every queue name,
    routing key and binding key built from them fits AMQP's short strings (255 bytes), a
    delayed message's and the dead-letter lock's included, when the broker's check passes."""
    namespace = naming.check_namespace("n" * 80)
    queue = "q" * (naming.SHORT_STRING_BYTES - len(naming.dlq_lock(namespace, "")))
    naming.check_queue(namespace, queue)
    assert not _too_long(_derived(namespace, _actor(queue)))
    widest = _actor("w" * MAX_QUEUE_BYTES)  # alone, the longest queue name of all
    assert not _too_long(_derived("n", widest))


def test_a_namespace_and_queue_too_long_together_fail_before_anything_is_declared(
    rabbit_broker: RabbitBroker, namespace: str
) -> None:
    """An 80-character namespace and a 170-byte queue name (each valid): declaring, running
    a worker, sending and `dlq list` fail at once with `ConfigurationError`, saying the
    dead-letter lock would be 260 bytes, 5 too many; nothing was declared."""
    long_namespace = f"{namespace}-" + "n" * (79 - len(namespace))
    queue = "q" * 170
    actor = _actor(queue)
    broker = RabbitBroker(rabbit_broker.url, namespace=long_namespace)
    try:
        for attempt in (
            lambda: broker.declare(actor),
            lambda: broker.worker([actor]),
            lambda: broker.send(actor, LongestTopic(n=1)),
            lambda: broker.dead_letters(queue),
        ):
            with pytest.raises(ConfigurationError, match="5 bytes over") as refused:
                attempt()
            assert naming.dlq_lock(long_namespace, queue) in str(refused.value)
        with pytest.raises(NotFound):
            broker.message_count(naming.queue_name(long_namespace, queue))
    finally:
        broker.close()
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "leveret.services.cli",
            "dlq",
            "list",
            queue,
            "--broker-url",
            rabbit_broker.url,
            "--namespace",
            long_namespace,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 1
    assert "5 bytes over" in listed.stderr
    assert "Traceback" not in listed.stderr
