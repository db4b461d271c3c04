"""Contract tests: the same scenarios on the in-memory broker and on the real RabbitMQ."""

from __future__ import annotations

import dataclasses
from typing import Any

import pika
import pytest

from leveret.actors import NO_RETRY, Actor, Context, Reject, actor, handler, publish
from leveret.schemas import Message, PublishError, wire
from leveret.services import MemoryBroker
from leveret.services.broker import Broker
from leveret.services.delivery import Delivery
from leveret.services.topology import naming
from tests.support import Recorder, running, wait_until


class ItemAdded(Message, topic="tests.contract.item_added"):
    sku: str
    quantity: int = 1


class StockLow(Message, topic="tests.contract.stock_low"):
    sku: str


class Audit(Message, topic="tests.contract.audit"):
    what: str


seen = Recorder()


@pytest.fixture(autouse=True)
def _fresh_recorder() -> None:
    seen.items.clear()


class Inventory(Actor, queue="inventory"):
    retry = NO_RETRY  # failures go to the .dlq at once here; retries: test_retries.py

    @handler
    def added(self, msg: ItemAdded, ctx: Context) -> None:
        if msg.sku == "boom":
            raise ValueError("inventory exploded")
        if msg.sku == "reject":
            raise Reject("sku is blocked")
        seen.add(("inventory", msg.sku, ctx.message_id, ctx.correlation_id, ctx.attempt))
        if msg.quantity > 100:
            ctx.publish(StockLow(sku=msg.sku))


class Analytics(Actor, queue="analytics"):
    @handler
    def added(self, msg: ItemAdded) -> None:
        seen.add(("analytics", msg.sku))


@actor(queue="alerts")
def alert(msg: StockLow, ctx: Context) -> None:
    seen.add(("alert", msg.sku, ctx.correlation_id))
    Auditor.send(Audit(what=f"alerted {msg.sku}"))


class Auditor(Actor, queue="auditor"):
    @handler
    def audit(self, msg: Audit, ctx: Context) -> None:
        seen.add(("audit", msg.what, ctx.correlation_id))


ALL = (Inventory, Analytics, alert, Auditor)


def drain(broker: Broker, worker: Any, count: int) -> list[Any]:
    """Wait until the running worker's handlers recorded `count` items; return them."""
    return seen.wait_for(count, timeout_s=15)


def inject_raw(broker: Broker, actor_queue: str, body: bytes, topic: str | None) -> None:
    """Put a raw delivery straight into an actor's queue, as a foreign client would."""
    queue = naming.queue_name(broker.namespace, actor_queue)
    if isinstance(broker, MemoryBroker):
        with broker.changed:
            broker.queues[queue].append(
                Delivery(body, topic, "raw-1", None, None, {}, routing_key=queue)
            )
            broker.changed.notify_all()
        return
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(
        "", queue, body, pika.BasicProperties(type=topic, message_id="raw-1", delivery_mode=2)
    )
    connection.close()


def dead_letters(broker: Broker, actor_ref: Any, count: int) -> list[Delivery]:
    """Wait until `count` dead letters are in the actor's `.dlq`; return them."""
    found: list[Delivery] = []

    def enough() -> bool:
        found[:] = broker.dead_letters(actor_ref)
        return len(found) >= count

    wait_until(enough, 15, f"{count} dead letters")
    return found


def test_publish_fans_out_to_every_actor_bound_to_the_topic(broker: Broker) -> None:
    broker.declare(*ALL)
    with running(broker, *ALL, threads=2) as worker:
        publish(ItemAdded(sku="a"))
        items = drain(broker, worker, 2)
    assert sorted(item[:2] for item in items) == [("analytics", "a"), ("inventory", "a")]


def test_send_delivers_to_one_actor_only(broker: Broker) -> None:
    broker.declare(*ALL)
    with running(broker, *ALL, threads=2) as worker:
        message_id = Inventory.send(ItemAdded(sku="only-me"))
        items = drain(broker, worker, 1)
        assert broker.dead_letters(Inventory) == []
    assert items == [("inventory", "only-me", message_id, message_id, 1)]


def test_send_declares_the_actor_on_first_use(broker: Broker) -> None:
    Inventory.send(ItemAdded(sku="early"))  # no worker and no declare yet: kept in the queue
    with running(broker, *ALL, threads=2) as worker:
        items = drain(broker, worker, 1)
    assert items[0][:2] == ("inventory", "early")


def test_send_to_a_missing_queue_raises_publish_error(broker: Broker) -> None:
    broker.declare(Inventory)
    broker.delete(Inventory)
    broker._declared.add(as_declared := Inventory)  # the broker believes it is declared
    with pytest.raises(PublishError, match="no queue"):
        broker.send(as_declared, ItemAdded(sku="lost?"))


def test_publish_with_no_subscriber_is_not_an_error(broker: Broker) -> None:
    message_id = broker.publish(Audit(what="nobody listens"))
    assert len(message_id) == 32


def test_correlation_id_is_carried_through_a_chain(broker: Broker) -> None:
    broker.declare(*ALL)
    with running(broker, *ALL, threads=2) as worker:
        first = broker.publish(ItemAdded(sku="many", quantity=500))
        items = drain(broker, worker, 4)
    correlations = {item[0]: item[-1] for item in items if item[0] in ("alert", "audit")}
    assert correlations == {"alert": first, "audit": first}


def test_publish_many_returns_ids_in_order_and_all_are_handled(broker: Broker) -> None:
    broker.declare(Inventory)
    with running(broker, Inventory, threads=4) as worker:
        ids = broker.publish_many([ItemAdded(sku=f"s{n}") for n in range(50)])
        items = drain(broker, worker, 50)
    assert len(set(ids)) == 50
    assert sorted(item[2] for item in items) == sorted(ids)


def test_failing_handler_dead_letters_with_the_error_and_worker_goes_on(
    broker: Broker,
) -> None:
    broker.declare(Inventory)
    with running(broker, Inventory, threads=2) as worker:
        failed_id = Inventory.send(ItemAdded(sku="boom"))
        Inventory.send(ItemAdded(sku="fine"))
        drain(broker, worker, 1)
        (letter,) = dead_letters(broker, Inventory, 1)
    assert letter.message_id == failed_id
    headers = letter.headers
    assert headers[wire.ERROR_REASON] == "handler_error"
    assert headers[wire.ERROR_TYPE] == "builtins.ValueError"
    assert headers[wire.ERROR_MESSAGE] == "inventory exploded"
    assert 'raise ValueError("inventory exploded")' in headers[wire.ERROR_TRACEBACK]
    assert headers[wire.FAILED_ACTOR] == "inventory"
    assert headers[wire.ATTEMPT] == 1
    assert letter.body == b'{"sku":"boom","quantity":1}'


def test_reject_dead_letters_at_once_without_traceback(broker: Broker) -> None:
    broker.declare(Inventory)
    with running(broker, Inventory, threads=2):
        Inventory.send(ItemAdded(sku="reject"))
        (letter,) = dead_letters(broker, Inventory, 1)
    assert letter.headers[wire.ERROR_REASON] == "rejected"
    assert letter.headers[wire.ERROR_MESSAGE] == "sku is blocked"
    assert wire.ERROR_TRACEBACK not in letter.headers


@pytest.mark.parametrize(
    ("body", "topic", "reason"),
    [
        (b"{not json", ItemAdded.topic(), "malformed_body"),
        (b'{"sku": 5, "quantity": "many"}', ItemAdded.topic(), "invalid_message"),
        (b'{"sku": "x"}', "tests.contract.nobody_handles_this", "unknown_topic"),
    ],
)
def test_undecodable_delivery_goes_to_dlq_with_reason(
    broker: Broker, body: bytes, topic: str, reason: str
) -> None:
    broker.declare(Inventory)
    with running(broker, Inventory, threads=2) as worker:
        inject_raw(broker, "inventory", body, topic)
        Inventory.send(ItemAdded(sku="after"))
        drain(broker, worker, 1)
        (letter,) = dead_letters(broker, Inventory, 1)
    assert letter.headers[wire.ERROR_REASON] == reason
    assert letter.body == body
    assert letter.headers[wire.ERROR_MESSAGE]


def test_worker_restricted_to_some_queues_leaves_the_others(broker: Broker) -> None:
    broker.declare(*ALL)
    with running(broker, *ALL, threads=2, queues=["analytics"]) as worker:
        publish(ItemAdded(sku="q"))
        items = drain(broker, worker, 1)
    assert [item[0] for item in items] == ["analytics"]


class Note(Message, topic="tests.contract.note"):
    text: str


class Notebook(Actor, queue="notebook"):
    @handler
    def on(self, msg: Note, ctx: Context) -> None:
        seen.add(("note", msg.text, ctx.envelope.headers.get("x-app-tenant")))


def test_headers_of_a_prepared_message_reach_the_handler(broker: Broker) -> None:
    """A message prepared with headers (as the outbox stores them) keeps them on the wire."""
    prepared = broker.prepare(Note(text="hi"), actor=Notebook)
    envelope = dataclasses.replace(prepared.envelope, headers={"x-app-tenant": "acme"})
    with running(broker, Notebook, threads=1):
        broker.publish_prepared([dataclasses.replace(prepared, envelope=envelope)])
        assert drain(broker, None, 1) == [("note", "hi", "acme")]
