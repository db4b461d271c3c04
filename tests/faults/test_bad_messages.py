"""Messages a worker cannot decode go to the actor's dead-letter queue; the worker goes on."""

from __future__ import annotations

import json

import pika
import pytest

from leveret.actors import Actor, handler
from leveret.schemas import Message, wire
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.support import Recorder, running, wait_until

pytestmark = [pytest.mark.fault]


class Parcel(Message, topic="tests.faults.parcel"):
    """A parcel to weigh."""

    n: int
    weight_g: int


class Scale(Actor, queue="scale"):
    """Records the number of every parcel it handles in `Scale.seen`."""

    seen = Recorder()

    @handler
    def weigh(self, msg: Parcel) -> None:
        self.seen.add(msg.n)


BAD = {
    "bad-malformed": (Parcel.topic(), b'{"n": 1, "weight_g": ', "malformed_body"),
    "bad-invalid": (Parcel.topic(), b'{"n": 2, "weight_g": "heavy"}', "invalid_message"),
    "bad-unknown": ("tests.faults.nobody_handles_this", b'{"n": 3}', "unknown_topic"),
}


def _raw_publish(channel: object, queue: str, message_id: str, topic: str, body: bytes) -> None:
    channel.basic_publish(  # type: ignore[attr-defined]
        "",
        queue,
        body,
        pika.BasicProperties(
            content_type="application/json", type=topic, message_id=message_id, delivery_mode=2
        ),
    )


def test_undecodable_messages_are_dead_lettered_with_their_reason(
    rabbit_broker: RabbitBroker, rabbit_url: str
) -> None:
    """Malformed, invalid and unknown-topic messages end in .dlq with a reason; valid ones run."""
    Scale.seen = Recorder()
    rabbit_broker.declare(Scale)
    queue = naming.queue_name(rabbit_broker.namespace, Scale.queue)

    def valid(n: int) -> tuple[str, bytes]:
        return Parcel.topic(), json.dumps({"n": n, "weight_g": 100 * n}).encode()

    with running(rabbit_broker, Scale, threads=2):
        connection = pika.BlockingConnection(pika.URLParameters(rabbit_url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            for n, (message_id, (topic, body, _reason)) in enumerate(BAD.items(), start=1):
                _raw_publish(channel, queue, f"good-{n}", *valid(n))
                _raw_publish(channel, queue, message_id, topic, body)
            _raw_publish(channel, queue, "good-4", *valid(4))
        finally:
            connection.close()
        assert sorted(Scale.seen.wait_for(4)) == [1, 2, 3, 4]
        wait_until(lambda: len(rabbit_broker.dead_letters(Scale)) == len(BAD), 10, "3 dead letters")

        # The worker goes on after them.
        rabbit_broker.send(Scale, Parcel(n=5, weight_g=500))
        assert sorted(Scale.seen.wait_for(5)) == [1, 2, 3, 4, 5]

    dead = {item.message_id: item for item in rabbit_broker.dead_letters(Scale)}
    assert set(dead) == set(BAD), dead
    for message_id, (topic, body, reason) in BAD.items():
        item = dead[message_id]
        assert item.headers[wire.ERROR_REASON] == reason, item.headers
        message = item.headers[wire.ERROR_MESSAGE]
        assert isinstance(message, str), item.headers
        assert len(message) > 10, message
        assert item.body == body, "the dead letter keeps the original body"
        assert item.topic == topic
    assert "not valid JSON" in dead["bad-malformed"].headers[wire.ERROR_MESSAGE]
    assert "nobody_handles_this" in dead["bad-unknown"].headers[wire.ERROR_MESSAGE]
    assert "weight_g" in dead["bad-invalid"].headers[wire.ERROR_MESSAGE]
    assert rabbit_broker.message_count(queue) == 0
