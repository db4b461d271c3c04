"""Property: any properties, headers and body a foreign client publishes end handled or in
the .dlq with a reason, each exactly once, and the worker stays healthy and goes on."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st

from leveret.actors import Actor, Context, handler
from leveret.schemas import Message, wire
from leveret.services import RabbitBroker
from leveret.services.operations.health import HealthServer, WorkerProbe
from leveret.services.runtime.worker import Worker
from leveret.services.topology import naming
from tests.raw_amqp import RawHeaders, client, far_timestamp, nested_tables
from tests.support import Recorder, broker_examples, get_health, running, wait_until

pytestmark = [pytest.mark.fault]

SEQ = "x-test-seq"
MAX_BODY = 64 * 1024


class Sample(Message, topic="tests.foreign.sample"):
    """What the sink handles; anything else a foreign client sends is dead-lettered."""

    n: int
    note: str = ""


class Sink(Actor, queue="foreign"):
    """Records the sequence number header of every message it handles; never fails."""

    seen = Recorder()

    @handler
    def on(self, msg: Sample, ctx: Context) -> None:
        # Messages with a raw header table carry their number in the body instead.
        Sink.seen.add(ctx.envelope.headers.get(SEQ, msg.n))


# What a foreign client can put in properties and headers -------------------------------

texts = st.text(max_size=40)
short_bytes = st.binary(max_size=40)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
header_values = st.recursive(
    st.one_of(
        texts,
        short_bytes,
        int64,
        st.booleans(),
        st.none(),
        st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False),
        st.datetimes(
            min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
        ),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
attempt_values = st.one_of(int64, texts, st.booleans(), st.none(), st.just([1]))
header_tables = st.dictionaries(
    st.text(alphabet="abcdefghij-", min_size=1, max_size=12).map(lambda k: f"h-{k}"),
    header_values,
    max_size=4,
)
topics = st.one_of(
    st.just(Sample.topic()),
    st.just(Sample.topic()),
    texts,
    short_bytes,
    st.none(),
)
ids = st.one_of(st.none(), texts, short_bytes.filter(bool))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), int64, st.floats(allow_nan=False), texts),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)
bodies = st.one_of(
    st.builds(lambda n, note: json.dumps({"n": n, "note": note}).encode(), int64, texts),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
    st.just(b"\xff\xfe{" + b'"n": 1}'),
    st.integers(min_value=50, max_value=5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.just(json.dumps({"n": 1, "note": "x" * (MAX_BODY + 10)}).encode()),
)


@st.composite
def foreign_messages(draw: st.DrawFn) -> tuple[pika.BasicProperties, bytes]:
    """The properties and body of one message, as any client might send them."""
    headers = draw(header_tables)
    if draw(st.booleans()):
        headers[wire.ATTEMPT] = draw(attempt_values)
    # Short strings may be bytes that are not UTF-8 (pika's stubs say str; pika sends them).
    fields: dict[str, Any] = {
        "content_type": draw(st.sampled_from(["application/json", "text/plain", None])),
        "content_encoding": draw(st.sampled_from([None, "gzip", "utf-8"])),
        "headers": headers,
        "delivery_mode": draw(st.sampled_from([None, 1, 2])),
        "priority": draw(st.one_of(st.none(), st.integers(0, 9))),
        "correlation_id": draw(ids),
        "reply_to": draw(st.one_of(st.none(), texts)),
        "message_id": draw(ids),
        "timestamp": draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
        "type": draw(topics),
        "app_id": draw(st.one_of(st.none(), texts)),
    }
    properties = pika.BasicProperties(**fields)
    raw = draw(st.sampled_from([None, None, None, "far", "deep"]))
    if raw is not None:
        properties = RawHeaders(
            far_timestamp() if raw == "far" else nested_tables(2000), **vars(properties)
        )
    return properties, draw(bodies)


@dataclass
class Running:
    broker: RabbitBroker
    worker: Worker
    health_port: int
    url: str


@pytest.fixture
def sink(rabbit_broker: RabbitBroker, rabbit_url: str) -> Iterator[Running]:
    Sink.seen = Recorder()
    with running(rabbit_broker, Sink, threads=2, max_body_bytes=MAX_BODY) as worker:
        server = HealthServer(WorkerProbe(worker, ["foreign"]), port=0)
        server.start()
        try:
            yield Running(rabbit_broker, worker, server.port, rabbit_url)
        finally:
            server.close()


_sequence = itertools.count(1)


@broker_examples(40)
@given(batch=st.lists(foreign_messages(), min_size=1, max_size=5))
def test_every_foreign_message_ends_handled_or_dead_lettered_once(
    sink: Running, batch: list[tuple[pika.BasicProperties, bytes]]
) -> None:
    broker = sink.broker
    queue = naming.queue_name(broker.namespace, Sink.queue)
    sent = []
    with client(sink.url) as foreign:
        for properties, body in batch:
            seq = next(_sequence)
            if isinstance(properties, RawHeaders):
                properties.headers = None  # the raw table stands for them; seq in the body
                body = json.dumps({"n": seq}).encode()
                properties.type = Sample.topic()
            else:
                properties.headers = {**(properties.headers or {}), SEQ: seq}
            sent.append(seq)
            foreign.publish(queue, body, properties)
        # A valid message after the batch is handled too: the worker goes on.
        check = next(_sequence)
        foreign.publish(
            queue,
            json.dumps({"n": check}).encode(),
            pika.BasicProperties(type=Sample.topic(), headers={SEQ: check}),
        )

    wait_until(lambda: check in Sink.seen.items, 15, "the valid message after the batch")
    handled = [item for item in Sink.seen.items if item in sent]
    letters = broker.dead_letters(Sink, limit=1000)
    dead = [letter.headers.get(SEQ) for letter in letters]
    assert sorted([*handled, *dead], key=str) == sorted(sent, key=str), (handled, dead)
    for letter in letters:
        assert letter.headers.get(wire.ERROR_REASON), letter.headers
    assert broker.message_count(queue) == 0
    assert sink.worker.threads_alive()
    assert get_health(sink.health_port)[0] == 200
    broker.purge_dead_letters(Sink)
