"""RabbitMQ specifics: wire format, queue arguments, declaration errors, unreachable broker."""

from __future__ import annotations

import json
import subprocess
import time

import pika
import pytest

from leveret.actors import Actor, Context, handler
from leveret.schemas import Message, PublishError, TopologyError
from leveret.services import RabbitBroker
from leveret.services.runtime.worker import EXIT_FATAL
from leveret.services.testing import captured_logs
from leveret.services.topology import declarations as topology
from leveret.services.topology import naming
from tests.support import (
    RABBITMQCTL,
    Recorder,
    declare_as_leveret_0_1,
    running,
    take_all,
    wait_until,
)


class Parcel(Message, topic="tests.rabbit.parcel"):
    weight_g: int


got = Recorder()


class Depot(Actor, queue="depot", delivery_limit=5):
    @handler
    def on(self, msg: Parcel, ctx: Context) -> None:
        got.add((msg.weight_g, ctx.envelope))


def test_wire_format_is_readable_by_a_plain_amqp_client(rabbit_broker: RabbitBroker) -> None:
    message_id = rabbit_broker.send(Depot, Parcel(weight_g=250), correlation_id="corr-1")
    ((props, body),) = take_all(
        rabbit_broker.url, naming.queue_name(rabbit_broker.namespace, "depot")
    )
    assert props.timestamp is not None
    assert props.headers is not None
    assert json.loads(body) == {"weight_g": 250}
    assert props.content_type == "application/json"
    assert props.type == "tests.rabbit.parcel"
    assert props.message_id == message_id
    assert props.correlation_id == "corr-1"
    assert props.delivery_mode == 2
    assert abs(props.timestamp - time.time()) < 60
    assert props.headers["x-leveret-attempt"] == 1
    assert set(props.headers) <= {"x-leveret-attempt", "x-delivery-count"}  # the latter: quorum


def test_a_plain_amqp_client_can_publish_to_an_actor(rabbit_broker: RabbitBroker) -> None:
    rabbit_broker.declare(Depot)
    got.items.clear()
    with running(rabbit_broker, Depot, threads=1):
        connection = pika.BlockingConnection(pika.URLParameters(rabbit_broker.url))
        channel = connection.channel()
        channel.basic_publish(
            naming.events_exchange(rabbit_broker.namespace),
            "tests.rabbit.parcel",  # no properties at all: the routing key is the topic
            b'{"weight_g": 9}',
        )
        connection.close()
        ((weight, envelope),) = got.wait_for(1)
    assert weight == 9
    assert envelope.attempt == 1
    assert envelope.topic == "tests.rabbit.parcel"


def test_actor_queue_is_quorum_with_delivery_limit_and_dead_lettering(
    rabbit_broker: RabbitBroker,
) -> None:
    rabbit_broker.declare(Depot)
    out = subprocess.run(
        [*RABBITMQCTL, "-q", "list_queues", "name", "type", "arguments"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    line = next(
        row for row in out.splitlines() if row.startswith(f"{rabbit_broker.namespace}.depot\t")
    )
    assert "quorum" in line
    assert '{"x-delivery-limit",5}' in line
    assert f"{rabbit_broker.namespace}.dead" in line
    assert '{"x-dead-letter-strategy","at-least-once"}' in line
    assert '{"x-overflow","reject-publish"}' in line


def _declare_as_leveret_0_1(broker: RabbitBroker, **changed: object) -> str:
    """Declare Depot's queue as Leveret 0.1 did, with `changed` arguments; its name."""
    queue = declare_as_leveret_0_1(broker.url, broker.namespace, Depot, **changed)
    broker._declared.add(Depot)  # so the fixture deletes it
    return queue


def test_a_queue_declared_by_leveret_0_1_is_used_as_it_is_with_one_warning(
    rabbit_broker: RabbitBroker,
) -> None:
    """RabbitMQ cannot change a queue's arguments: an actor queue declared before
    at-least-once dead-lettering is accepted by the publisher's and the worker's
    declarations (the worker's on the channel its deliveries come on), and one warning
    says what it lacks."""
    queue = _declare_as_leveret_0_1(rabbit_broker)
    got.items.clear()
    with captured_logs("warning") as logs:
        rabbit_broker.declare(Depot)
        with running(rabbit_broker, Depot, threads=1):
            rabbit_broker.send(Depot, Parcel(weight_g=3))
            ((weight, _envelope),) = got.wait_for(1)
    assert weight == 3
    warned = [event for event in logs if event["event"] == "queue_declared_by_older_leveret"]
    assert len(warned) == 1, warned
    assert warned[0]["queue"] == queue
    assert warned[0]["lacks"] == topology.AT_LEAST_ONCE_DEAD_LETTERING
    assert not [event for event in logs if event["event"] == "queue_arguments_differ"]


def test_a_leveret_0_1_queue_with_another_delivery_limit_is_a_clear_topology_error(
    rabbit_broker: RabbitBroker,
) -> None:
    _declare_as_leveret_0_1(rabbit_broker, **{"x-delivery-limit": 9})
    with captured_logs("warning") as logs, pytest.raises(TopologyError, match="PRECONDITION"):
        rabbit_broker.declare(Depot)
    (differ,) = [event for event in logs if event["event"] == "queue_arguments_differ"]
    assert len(differ["refusals"]) == 2  # neither the current nor the legacy arguments
    assert any("x-delivery-limit" in refusal for refusal in differ["refusals"])
    rabbit_broker.publish(Parcel(weight_g=1))  # the publisher goes on


def test_declare_is_idempotent(rabbit_broker: RabbitBroker) -> None:
    rabbit_broker.declare(Depot)
    rabbit_broker.declare(Depot)
    assert rabbit_broker.message_count(naming.queue_name(rabbit_broker.namespace, "depot")) == 0


def test_conflicting_existing_queue_is_a_clear_topology_error(rabbit_broker: RabbitBroker) -> None:
    queue = naming.queue_name(rabbit_broker.namespace, "depot")
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_broker.url))
    connection.channel().queue_declare(queue, durable=True)  # classic, no arguments
    connection.close()
    rabbit_broker._declared.add(Depot)  # so the fixture deletes it
    with pytest.raises(TopologyError, match="PRECONDITION_FAILED"):
        rabbit_broker.declare(Depot)
    # the publisher still works after the refused declaration
    rabbit_broker.publish(Parcel(weight_g=1))


def test_worker_stops_with_a_clear_error_on_conflicting_topology(
    rabbit_broker: RabbitBroker,
) -> None:
    queue = naming.queue_name(rabbit_broker.namespace, "depot")
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_broker.url))
    connection.channel().queue_declare(queue, durable=True)
    connection.close()
    rabbit_broker._declared.add(Depot)
    worker = rabbit_broker.worker([Depot], threads=1)
    worker.start()
    wait_until(lambda: worker.stopped, 20, "the worker to stop by itself")
    assert worker.exit_code == EXIT_FATAL
    assert "PRECONDITION_FAILED" in (worker.fatal_error or "")


def test_publish_to_an_unreachable_broker_fails_clearly_without_password(namespace: str) -> None:
    broker = RabbitBroker(
        "amqp://guest:sekrit@127.0.0.1:1/", namespace=namespace, confirm_timeout_s=1
    )
    try:
        with pytest.raises(PublishError) as caught:
            broker.publish(Parcel(weight_g=1))
    finally:
        broker.close()
    text = str(caught.value)
    assert "unreachable" in text
    assert "sekrit" not in text
