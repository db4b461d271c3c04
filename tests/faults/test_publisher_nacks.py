"""A message the broker refuses (basic.nack) is sent again, same message id, until it is
stored or its caller stops waiting: a caller is never told a refused message is stored.

RabbitMQ nacks a publish to a full quorum queue whose overflow is ``reject-publish``: a
real nack, made on purpose (in a cluster they come from a queue's leader changing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from leveret.schemas.errors import PublishTimeout
from leveret.services import RabbitBroker
from leveret.services.rabbitmq._outgoing import Outgoing
from leveret.services.rabbitmq._publisher import Publisher
from leveret.services.testing import captured_logs
from tests.support import fill_until_refused, take_all, wait_until

pytestmark = [pytest.mark.fault]


@pytest.fixture
def full_queue(rabbit_broker: RabbitBroker) -> Iterator[str]:
    """A quorum queue already full: it refuses (nacks) every publish until emptied.

    Filled with raw pika until the broker nacks (a quorum queue checks its length limit as
    it stores, so it may take a message or two past ``x-max-length``)."""
    queue = f"{rabbit_broker.namespace}.full"
    with rabbit_broker.admin() as channel:
        channel.queue_declare(
            queue,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"},
        )
    fill_until_refused(rabbit_broker, queue)
    try:
        yield queue
    finally:
        with rabbit_broker.admin() as channel:
            channel.queue_delete(queue)


def _fillers(url: str, queue: str) -> list[str]:
    """Take every message out of the queue (making room); the fillers' ids."""
    ids = [str(props.message_id) for props, _body in take_all(url, queue)]
    assert ids, "the queue held no filler"
    assert all(one.startswith("filler-") for one in ids), ids
    return ids


def _message(queue: str, message_id: str) -> Outgoing:
    return Outgoing("", queue, message_id.encode(), pika.BasicProperties(message_id=message_id))


def test_a_nacked_message_is_sent_again_until_stored_and_only_then_confirmed(
    rabbit_broker: RabbitBroker, full_queue: str
) -> None:
    publisher: Publisher = rabbit_broker.publisher
    outcome: dict[str, object] = {}

    def publish_second() -> None:
        try:
            outcome["batch"] = publisher.publish([_message(full_queue, "second")], timeout_s=20)
        except Exception as exc:  # the assertion below says what it was
            outcome["error"] = exc
        outcome["returned_at"] = time.monotonic()

    with captured_logs() as logs:
        caller = threading.Thread(target=publish_second)
        caller.start()
        wait_until(
            lambda: sum(e["event"] == "publish_nacked" for e in logs) >= 2,
            10,
            "the broker refusing the second message twice",
        )
        assert "returned_at" not in outcome  # refused: its caller still waits
        taken_at = time.monotonic()
        _fillers(rabbit_broker.url, full_queue)  # room again
        caller.join(15)
    assert "error" not in outcome, outcome
    assert outcome["returned_at"] >= taken_at  # type: ignore[operator]
    # Each nack (at most once a second) replaced the channel: a channel can stay stuck
    # nacking after a quorum queue's leader changed (RabbitMQ 3.10).
    assert any(e["event"] == "publisher_channel_renewed" for e in logs)
    nacked = [e for e in logs if e["event"] == "publish_nacked"]
    assert {e["message_id"] for e in nacked} == {"second"}
    assert [e["nacks"] for e in nacked] == list(range(1, len(nacked) + 1))
    stored = take_all(rabbit_broker.url, full_queue)
    assert [(props.message_id, body) for props, body in stored] == [("second", b"second")]


def test_a_message_refused_until_the_callers_timeout_fails_with_the_reason_and_is_not_sent_late(
    rabbit_broker: RabbitBroker, full_queue: str
) -> None:
    publisher: Publisher = rabbit_broker.publisher
    with pytest.raises(PublishTimeout, match=r"refused \(nack\) message late") as raised:
        publisher.publish([_message(full_queue, "late")], timeout_s=1.5)
    assert raised.value.message_id == "late"
    _fillers(rabbit_broker.url, full_queue)  # room again: a late copy would now be stored
    time.sleep(2.5)  # longer than the longest pause before sending a nacked message again
    assert take_all(rabbit_broker.url, full_queue) == []
    # The publisher goes on: the next message is stored and confirmed.
    publisher.publish([_message(full_queue, "next")])
    assert [p.message_id for p, _ in take_all(rabbit_broker.url, full_queue)] == ["next"]


def test_a_nacked_message_does_not_hold_up_the_others_of_its_batch_or_other_callers(
    rabbit_broker: RabbitBroker, full_queue: str
) -> None:
    """Messages to another queue, in the same batch and from another caller, are confirmed
    while one message is refused again and again."""
    other = f"{rabbit_broker.namespace}.roomy"
    with rabbit_broker.admin() as channel:
        channel.queue_declare(other, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        publisher: Publisher = rabbit_broker.publisher
        batch = publisher.publish(
            [_message(other, "a"), _message(full_queue, "refused"), _message(other, "b")],
            raise_errors=False,
            timeout_s=1.5,
        )
        assert set(batch.errors) == {1}
        assert batch.timed_out == [1]
        assert "nack" in batch.errors[1]
        assert publisher.publish([_message(other, "c")]).errors == {}
        assert [p.message_id for p, _ in take_all(rabbit_broker.url, other)] == ["a", "b", "c"]
    finally:
        with rabbit_broker.admin() as channel:
            channel.queue_delete(other)


def test_replacing_the_channel_after_a_nack_stores_the_messages_around_it_once(
    rabbit_broker: RabbitBroker, full_queue: str
) -> None:
    """A nack replaces the channel, but not while messages it sent are unconfirmed: those
    the broker stored would be sent again on the new channel and stored twice."""
    other = f"{rabbit_broker.namespace}.roomy"
    with rabbit_broker.admin() as channel:
        channel.queue_declare(other, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        publisher: Publisher = rabbit_broker.publisher
        ids = [f"m{n}" for n in range(600)]
        items = [_message(full_queue, "refused")]
        items += [_message(other, one) for one in ids]
        with captured_logs() as logs:
            batch = publisher.publish(items, raise_errors=False, timeout_s=3)
        assert set(batch.errors) == {0}, batch.errors
        assert any(e["event"] == "publisher_channel_renewed" for e in logs)
        stored = [str(p.message_id) for p, _ in take_all(rabbit_broker.url, other)]
        assert sorted(stored) == sorted(ids)  # each once: none lost, none twice
    finally:
        with rabbit_broker.admin() as channel:
            channel.queue_delete(other)
