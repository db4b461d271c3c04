"""Whatever another AMQP client sends, each message ends handled or in the .dlq with a
reason, and the worker goes on: timestamps in any unit, hostile attempt headers, no
message id, ids that are not UTF-8, headers pika cannot decode, oversized bodies."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pika
import pytest

from leveret.actors import Actor, Context, RetryPolicy, fixed, handler
from leveret.schemas import Message, wire
from leveret.services import RabbitBroker
from leveret.services.operations.health import HealthServer, WorkerProbe
from leveret.services.rabbitmq._frames import UNDECODABLE_HEADERS
from leveret.services.runtime.worker import Worker
from leveret.services.testing import captured_logs
from leveret.services.topology import naming
from tests.raw_amqp import RawHeaders, client, far_timestamp, field, nested_tables
from tests.support import Recorder, get_health, running, wait_until

pytestmark = [pytest.mark.fault]


class Probe(Message, topic="tests.hostile.probe"):
    """Handled when `n` >= 0; fails on purpose when negative."""

    n: int


class Target(Actor, queue="hostile"):
    """Records (n, message_id, timestamp, attempt) of every run; retries 3 times at once."""

    retry = RetryPolicy(attempts=3, backoff=fixed(0))
    seen = Recorder()

    @handler
    def on(self, msg: Probe, ctx: Context) -> None:
        Target.seen.add((msg.n, ctx.message_id, ctx.envelope.timestamp, ctx.attempt))
        if msg.n < 0:
            raise RuntimeError(f"probe {msg.n} fails on purpose")


def _body(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


def _props(**fields: object) -> pika.BasicProperties:
    fields.setdefault("type", Probe.topic())
    return pika.BasicProperties(content_type="application/json", **fields)  # type: ignore[arg-type]


@dataclass
class Running:
    worker: Worker
    health_port: int


@pytest.fixture
def worker(rabbit_broker: RabbitBroker) -> Iterator[Running]:
    """A worker of `Target` with two handler threads and a health server."""
    Target.seen = Recorder()
    with running(rabbit_broker, Target, threads=2, max_body_bytes=4096) as started:
        server = HealthServer(WorkerProbe(started, ["hostile"]), port=0)
        server.start()
        try:
            yield Running(started, server.port)
        finally:
            server.close()


def _assert_still_working(broker: RabbitBroker, worker: Running, n: int) -> None:
    """A valid message sent now is handled, and the worker is healthy."""
    Target.send(Probe(n=n))
    wait_until(lambda: any(item[0] == n for item in Target.seen.items), 10, f"probe {n}")
    assert worker.worker.threads_alive()
    assert get_health(worker.health_port)[0] == 200


def _queue(broker: RabbitBroker) -> str:
    return naming.queue_name(broker.namespace, Target.queue)


def test_timestamps_in_any_unit_are_read_and_garbage_is_ignored(
    rabbit_broker: RabbitBroker, rabbit_url: str, worker: Running
) -> None:
    """Seconds, milliseconds (JavaScript's Date.now()), microseconds, nanoseconds: the
    handler sees the right time; 0 and 2^64 - 1 do not stop anything."""
    now = time.time()
    stamps = {
        1: int(now),
        2: int(now * 1000),
        3: int(now * 1_000_000),
        4: int(now * 1_000_000_000),
        5: 2**64 - 1,
        6: 0,
    }
    with client(rabbit_url) as foreign:
        for n, stamp in stamps.items():
            foreign.publish(_queue(rabbit_broker), _body(n), _props(timestamp=stamp))
    seen = {item[0]: item[2] for item in Target.seen.wait_for(len(stamps))}
    expected = datetime.fromtimestamp(int(now), UTC)
    for n in (1, 2, 3, 4):
        assert abs(seen[n] - expected) <= timedelta(seconds=1), (n, seen[n])
    assert abs(seen[5] - datetime.now(UTC)) < timedelta(minutes=1)  # nonsense: received now
    assert seen[6] == datetime.fromtimestamp(0, UTC)
    _assert_still_working(rabbit_broker, worker, 100)


def test_hostile_attempt_headers_never_buy_extra_retries(
    rabbit_broker: RabbitBroker, rabbit_url: str, worker: Running
) -> None:
    """Negative, huge, fractional, textual or nested attempt headers: at most 3 runs each,
    then the .dlq."""
    attempts: list[object] = [-1_000_000_000, 2**62, 1.5, "abc", "2", True, {"a": 1}, [3]]
    with client(rabbit_url) as foreign:
        for index, value in enumerate(attempts):
            props = _props(message_id=f"attempt-{index}", headers={wire.ATTEMPT: value})
            if isinstance(value, float):  # a double, as Java or .NET send: pika cannot
                props.headers = None
                props = RawHeaders(
                    field(wire.ATTEMPT, b"d", struct.pack(">d", value)), **vars(props)
                )
            foreign.publish(_queue(rabbit_broker), _body(-1 - index), props)
    wait_until(
        lambda: rabbit_broker.dead_letter_count(Target) == len(attempts),
        20,
        "every hostile message in the .dlq",
    )
    runs: dict[str, int] = {}
    for _n, message_id, _stamp, _attempt in Target.seen.items:
        runs[message_id] = runs.get(message_id, 0) + 1
    assert set(runs) == {f"attempt-{index}" for index in range(len(attempts))}
    assert all(1 <= count <= 3 for count in runs.values()), runs
    assert runs["attempt-0"] == 3  # -1e9 reads as a first attempt
    assert runs["attempt-1"] == 1  # 2^62 is past every attempt: dead-lettered at once
    letters = rabbit_broker.dead_letters(Target)
    assert {letter.headers[wire.ERROR_REASON] for letter in letters} <= {
        "retries_exhausted",
        "handler_error",
    }
    _assert_still_working(rabbit_broker, worker, 101)


def test_a_message_without_id_keeps_one_id_through_its_retries(
    rabbit_broker: RabbitBroker, rabbit_url: str, worker: Running
) -> None:
    """No message_id: it gets one on arrival, which every retry and the dead letter keep."""
    with client(rabbit_url) as foreign:
        foreign.publish(_queue(rabbit_broker), _body(-50), _props())
    runs = [item for item in Target.seen.wait_for(3) if item[0] == -50]
    assert [item[3] for item in runs] == [1, 2, 3]
    (given,) = {item[1] for item in runs}
    assert len(given) == 32
    wait_until(lambda: rabbit_broker.dead_letter_count(Target) == 1, 10, "the dead letter")
    (letter,) = rabbit_broker.dead_letters(Target)
    assert letter.message_id == given
    _assert_still_working(rabbit_broker, worker, 102)


def test_ids_and_topics_that_are_not_utf8(
    rabbit_broker: RabbitBroker, rabbit_url: str, worker: Running
) -> None:
    """A message_id, correlation_id and type that are not UTF-8: read with replacement
    characters; the unknown topic goes to the .dlq with its reason."""
    with client(rabbit_url) as foreign:
        foreign.publish(
            _queue(rabbit_broker),
            _body(1),
            _props(message_id=b"\xff\xfeid", correlation_id=b"\xc3", type=b"\xfftopic"),
        )
        foreign.publish(
            _queue(rabbit_broker),
            _body(2),
            _props(message_id=b"\xff" * 255, correlation_id=b"\xc3"),
        )
    wait_until(lambda: rabbit_broker.dead_letter_count(Target) == 1, 10, "the dead letter")
    (letter,) = rabbit_broker.dead_letters(Target)
    assert letter.headers[wire.ERROR_REASON] == "unknown_topic"
    assert letter.message_id == "\ufffd\ufffdid"
    assert letter.topic == "\ufffdtopic"
    (handled,) = [item for item in Target.seen.wait_for(1) if item[0] == 2]
    assert len(handled[1].encode()) <= 255
    _assert_still_working(rabbit_broker, worker, 103)


def test_headers_pika_cannot_decode_do_not_break_the_connection(
    rabbit_broker: RabbitBroker, rabbit_url: str, worker: Running
) -> None:
    """A timestamp header past the year 9999 and tables nested 3,000 deep: the message is
    handled (its headers set aside) and the worker's connection is never dropped."""
    with captured_logs() as logs, client(rabbit_url) as foreign:
        for n, table in ((1, far_timestamp()), (2, nested_tables(3000))):
            foreign.publish(_queue(rabbit_broker), _body(n), RawHeaders(table, **vars(_props())))
        foreign.publish(
            _queue(rabbit_broker), _body(-3), RawHeaders(far_timestamp(), **vars(_props()))
        )
        seen = Target.seen.wait_for(5)
        wait_until(lambda: rabbit_broker.dead_letter_count(Target) == 1, 10, "the dead letter")
    assert {item[0] for item in seen} == {1, 2, -3}
    assert not [e for e in logs if e["event"] in ("worker_disconnected", "broker_unreachable")]
    (letter,) = rabbit_broker.dead_letters(Target)
    assert UNDECODABLE_HEADERS in letter.headers
    assert letter.headers[wire.ERROR_REASON] == "retries_exhausted"
    _assert_still_working(rabbit_broker, worker, 104)


def test_a_body_over_the_maximum_is_dead_lettered_unread(
    rabbit_broker: RabbitBroker, rabbit_url: str, worker: Running
) -> None:
    """Over `max_body_bytes` (4 KiB here): reason too_large, the body kept whole."""
    big = json.dumps({"n": 7, "pad": "x" * 5000}).encode()
    with client(rabbit_url) as foreign:
        foreign.publish(_queue(rabbit_broker), big, _props(message_id="big"))
    wait_until(lambda: rabbit_broker.dead_letter_count(Target) == 1, 10, "the dead letter")
    (letter,) = rabbit_broker.dead_letters(Target)
    assert letter.headers[wire.ERROR_REASON] == "too_large"
    assert letter.body == big
    assert "4096" in letter.headers[wire.ERROR_MESSAGE]
    assert not Target.seen.items
    _assert_still_working(rabbit_broker, worker, 105)
