"""Property: whatever any client publishes to the heartbeats exchange (bodies, properties,
headers), `leveret status` never crashes, answers within its bound, shows only printable
text, and never shows a forged row in place of a real worker once its next heartbeat came.

Each example publishes a batch with a plain pika client (publisher confirms), then the real
worker's next heartbeat (as `Heartbeats.payload` writes it), and takes a snapshot.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st

from leveret.services import RabbitBroker
from leveret.services.observability.redaction import printable
from leveret.services.operations.heartbeats import HEARTBEAT_FIELDS
from leveret.services.operations.status import StatusReader
from leveret.services.operations.status_table import render
from leveret.services.topology import naming
from tests.faults.test_foreign_messages_property import (
    header_tables,
    json_values,
    short_bytes,
    texts,
)
from tests.raw_amqp import RawHeaders, client, far_timestamp, nested_tables
from tests.support import broker_examples

pytestmark = [pytest.mark.fault]

REAL_ID = "0123456789abcdef0123456789abcdef"
LOOK_BOUND_S = 5.0
"""A look at a listener holding a few hundred heartbeats, with AMQP figures."""


def real_heartbeat(namespace: str) -> dict[str, Any]:
    """The real worker's heartbeat, sent now (the fields `Heartbeats.payload` writes)."""
    now = time.time()
    beat: dict[str, Any] = {
        "format": 1,
        "id": REAL_ID,
        "state": "running",
        "host": "real-host",
        "address": "10.0.0.5:55872",
        "pid": 812,
        "version": "0.1.0",
        "python": "3.12.0",
        "namespace": namespace,
        "actors": ["counted"],
        "queues": [naming.queue_name(namespace, "counted")],
        "threads": 8,
        "prefetch": 16,
        "in_flight": 0,
        "handled": 10,
        "retried": 0,
        "dead_lettered": 0,
        "answered": 0,
        "expired": 0,
        "last_error": None,
        "memory_bytes": 60_000_000,
        "started_at": now - 100,
        "uptime_s": 100.0,
        "sent_at": now,
        "interval_s": 5.0,
        "connected": True,
        "consuming": True,
    }
    assert set(beat) == set(HEARTBEAT_FIELDS)
    return beat


# What a forger can put in a heartbeat: the real worker's id, "stopped", any clock (offsets
# from now, or absolute), text that acts on a terminal, queue lists of any names; or any
# value in any field.
hostile_texts = texts | st.lists(
    st.sampled_from(["a", " ", "\x1b", "\x07", "\x9b", "\u202e", "\u2066", "\u200b", "\n", "]0;"]),
    max_size=12,
).map("".join)
clocks = st.one_of(
    st.sampled_from([0.0, -1.0, 5.0, 60.0, 10.0**9]).map(lambda offset: ("now", offset)),
    st.sampled_from([1e300, -1e18, 0.0, 2.0**70]),
    st.floats(allow_nan=True, allow_infinity=True),
)
any_values = st.one_of(json_values, st.floats(allow_nan=True, allow_infinity=True))
plausible_heartbeats = st.fixed_dictionaries(
    {
        "id": st.sampled_from([REAL_ID, REAL_ID, "forged", "\u202e"]) | hostile_texts,
        "sent_at": clocks,
    },
    optional={
        "state": st.sampled_from(["stopped", "running"]) | hostile_texts,
        "host": hostile_texts,
        "address": hostile_texts,
        "version": hostile_texts,
        "last_error": hostile_texts,
        "actors": st.lists(hostile_texts, max_size=5),
        "queues": st.lists(hostile_texts | st.text(max_size=10).map("ns.".__add__), max_size=20),
        "pid": st.integers(0, 2**63),
        "interval_s": st.sampled_from([0.001, 1.0, 3600.0]),
        "connected": st.booleans(),
    },
)
junk_heartbeats = st.fixed_dictionaries(
    {"id": st.sampled_from([REAL_ID, ""]) | texts, "sent_at": clocks | any_values},
    optional={name: any_values for name in HEARTBEAT_FIELDS if name not in ("id", "sent_at")},
)


def _encoded(beat: dict[str, Any]) -> bytes:
    """The forged heartbeat's body, its clock set when it is published."""
    clock = beat["sent_at"]
    if isinstance(clock, tuple):
        beat = {**beat, "sent_at": time.time() + clock[1]}
    return json.dumps(beat).encode()


bodies = st.one_of(
    plausible_heartbeats.map(_encoded),
    plausible_heartbeats.map(_encoded),
    junk_heartbeats.map(_encoded),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
    st.integers(min_value=50, max_value=5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.just(json.dumps({"id": "big", "sent_at": 1, "host": "x" * 70_000}).encode()),
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[pika.BasicProperties, bytes]:
    """The properties and body of one message on the heartbeats exchange."""
    fields: dict[str, Any] = {
        "content_type": draw(st.sampled_from(["application/json", "text/plain", None])),
        "headers": draw(header_tables),
        "delivery_mode": draw(st.sampled_from([None, 1, 2])),
        "correlation_id": draw(st.one_of(st.none(), texts, short_bytes.filter(bool))),
        "message_id": draw(st.one_of(st.none(), texts)),
        "timestamp": draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
        "type": draw(st.one_of(st.none(), texts)),
        "expiration": draw(st.sampled_from([None, "0", "60000"])),
        "priority": draw(st.one_of(st.none(), st.integers(0, 9))),
    }
    properties = pika.BasicProperties(**fields)
    raw = draw(st.sampled_from([None, None, None, "far", "deep"]))
    if raw is not None:
        properties = RawHeaders(
            far_timestamp() if raw == "far" else nested_tables(2000), **vars(properties)
        )
        properties.headers = None  # the raw table stands for them
    return properties, draw(bodies)


@pytest.fixture
def reader(rabbit_broker: RabbitBroker) -> StatusReader:
    """A reader of the test's namespace over AMQP only, its listener already declared."""
    reader = StatusReader(
        rabbit_broker, actors=["counted"], management_url="", first_wait_s=0, sample_s=0
    )
    reader.take()
    return reader


@broker_examples(60)
@given(batch=st.lists(messages(), min_size=1, max_size=5))
def test_status_survives_any_heartbeat_and_shows_the_real_worker_as_itself(
    rabbit_url: str,
    reader: StatusReader,
    batch: list[tuple[pika.BasicProperties, bytes]],
) -> None:
    namespace = reader.broker.namespace
    exchange = naming.heartbeats_exchange(namespace)
    with client(rabbit_url) as forger:
        forger.channel.queue_purge(naming.status_queue(namespace))  # each example on its own
        for properties, body in batch:
            forger.publish("", body, properties, exchange=exchange)
        forger.publish("", json.dumps(real_heartbeat(namespace)).encode(), exchange=exchange)

    started = time.monotonic()
    snapshot = reader.take()
    took_s = time.monotonic() - started
    assert took_s < LOOK_BOUND_S, took_s

    [real] = [row for row in snapshot.workers if row.id == REAL_ID]
    assert (real.host, real.pid, real.state, real.stale) == ("real-host", 812, "running", False)
    assert real.queues == [naming.queue_name(namespace, "counted")]
    for row in snapshot.workers:
        assert math.isfinite(row.age_s)
        assert row.age_s >= 0
        assert row.last_seen <= snapshot.taken_at + 5
    assert [queue.actor for queue in snapshot.queues] == ["counted"]
    text = render(snapshot)
    assert printable(text, keep_newlines=True) == text
    document = json.dumps(snapshot.to_json())
    assert json.loads(document)["namespace"] == namespace
