"""Asks observed, on the in-memory broker: the Prometheus metrics of the caller (asks by
result, latency, answers dropped) and of the worker (requests answered and expired), the
heartbeat's counts as `leveret status` and the dashboard show them, and one trace from the
ask through its request to the worker's handling."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from leveret.actors import Actor, Context, handler
from leveret.actors.control import Reject
from leveret.schemas import Message
from leveret.schemas.errors import (
    AskInterrupted,
    AskTimeout,
    BrokerUnavailable,
    InvalidReply,
    PublishError,
    PublishTimeout,
    RemoteError,
)
from leveret.services.broker import Broker
from leveret.services.delivery import Reply
from leveret.services.memory._asking import REPLY_TO, MemoryAsking
from leveret.services.observability.ask_metrics import ASK_RESULTS, ask_result
from leveret.services.observability.metrics import Metrics
from leveret.services.operations.heartbeats import HEARTBEAT_FIELDS, Heartbeats
from leveret.services.operations.status import Snapshot, parse_workers
from leveret.services.operations.status_table import render
from leveret.services.testing import MemoryBroker
from tests.support import running, wait_until


class PriceAsked(Message, topic="tests.obs_ask.price_asked"):
    sku: str


class Price(Message, topic="tests.obs_ask.price"):
    sku: str
    cents: int


class Prices(Actor, queue="obs_ask_prices"):
    @handler
    def price(self, msg: PriceAsked, ctx: Context) -> Price:
        if msg.sku == "none":
            raise Reject("no such sku")
        return Price(sku=msg.sku, cents=120)


ACTOR = Prices.queue


def _metrics(broker_actors: tuple[type[Actor], ...] = (Prices,)) -> Metrics:
    return Metrics({actor.queue: actor.topics() for actor in broker_actors}, slot="0")


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {**labels, "slot": "0"}) or 0.0


@pytest.mark.parametrize(
    ("error", "result"),
    [
        (None, "answered"),
        (AskTimeout("t"), "timeout"),
        (RemoteError("r"), "remote_error"),
        (InvalidReply("i"), "invalid_reply"),
        (AskInterrupted("x"), "interrupted"),
        (BrokerUnavailable("u"), "unavailable"),
        (PublishTimeout("p"), "publish_error"),
        (PublishError("p"), "publish_error"),
        (asyncio.CancelledError(), "cancelled"),
        (KeyboardInterrupt(), "other"),
    ],
)
def test_an_asks_result_label_comes_from_its_error_class(
    error: BaseException | None, result: str
) -> None:
    assert ask_result(error) == result
    assert result in ASK_RESULTS


def test_the_caller_counts_asks_by_result_with_their_latency(namespace: str) -> None:
    """Answered, failed by the actor (`RemoteError`) and timed out: one series each, and
    every ask timed; answers nobody waits for are counted as dropped, by reason."""
    metrics = _metrics()
    broker = MemoryBroker(namespace=namespace, middleware=[metrics])
    with running(broker, Prices, threads=2):
        assert broker.ask(Prices, PriceAsked(sku="a"), timeout=10).cents == 120
        with pytest.raises(RemoteError):
            broker.ask(Prices, PriceAsked(sku="none"), timeout=10)
    # No worker: the request waits; its caller gives up (the virtual clock stands still, so
    # the request is not past its deadline for the worker started next): its answer is late.
    with pytest.raises(AskTimeout):
        broker.ask(Prices, PriceAsked(sku="late"), timeout=0.2)
    with running(broker, Prices, threads=1) as worker:
        wait_until(lambda: worker.stats.handled == 1, 10, "the late request answered")
    asking = broker.transport.asking
    assert isinstance(asking, MemoryAsking)
    asking.deliver(
        Reply(to=REPLY_TO, correlation_id="0" * 32, status="ok", actor=ACTOR, message_id="1")
    )

    assert _value(metrics, "leveret_asks_total", actor=ACTOR, result="answered") == 1
    assert _value(metrics, "leveret_asks_total", actor=ACTOR, result="remote_error") == 1
    assert _value(metrics, "leveret_asks_total", actor=ACTOR, result="timeout") == 1
    assert _value(metrics, "leveret_ask_duration_seconds_count", actor=ACTOR) == 3
    timed = _value(metrics, "leveret_ask_duration_seconds_sum", actor=ACTOR)
    assert 0.2 <= timed < 10
    assert _value(metrics, "leveret_replies_dropped_total", reason="late") == 1
    assert _value(metrics, "leveret_replies_dropped_total", reason="unmatched") == 1
    assert _value(metrics, "leveret_replies_dropped_total", reason="other") == 0
    # The worker's side of the same asks: two answers and one error.
    assert _value(metrics, "leveret_requests_answered_total", actor=ACTOR, status="ok") == 2
    assert _value(metrics, "leveret_requests_answered_total", actor=ACTOR, status="error") == 1
    assert _value(metrics, "leveret_requests_expired_total", actor=ACTOR) == 0
    exposition = metrics.exposition().decode()
    assert 'leveret_asks_total{actor="obs_ask_prices",result="answered",slot="0"} 1.0' in (
        exposition
    )


def test_the_worker_counts_requests_answered_and_expired(namespace: str) -> None:
    """Metrics and heartbeat: a request answered with its answer, one with its error, and
    one taken past its deadline (acked unanswered); messages that are no requests are not
    counted as either."""
    metrics, beats = _metrics(), Heartbeats()
    broker = MemoryBroker(namespace=namespace, middleware=[metrics, beats])
    broker.declare(Prices)
    with pytest.raises(AskTimeout):
        broker.ask(Prices, PriceAsked(sku="expired"), timeout=0.2)
    broker.advance_clock(1)
    broker.send(Prices, PriceAsked(sku="sent, not asked"))
    with running(broker, Prices, threads=2) as worker:
        wait_until(lambda: worker.stats.handled == 2, 10, "the expired request acked")
        broker.ask(Prices, PriceAsked(sku="b"), timeout=10)
        with pytest.raises(RemoteError):
            broker.ask(Prices, PriceAsked(sku="none"), timeout=10)
        beat = beats.payload(worker)

    assert _value(metrics, "leveret_requests_expired_total", actor=ACTOR) == 1
    assert _value(metrics, "leveret_requests_answered_total", actor=ACTOR, status="ok") == 1
    assert _value(metrics, "leveret_requests_answered_total", actor=ACTOR, status="error") == 1
    assert (beat["answered"], beat["expired"]) == (2, 1)
    assert (beat["handled"], beat["dead_lettered"]) == (3, 1)
    assert set(beat) == set(HEARTBEAT_FIELDS)


def _heartbeat(**fields: object) -> bytes:
    beat: dict[str, object] = {
        "id": "w1",
        "host": "web-1",
        "pid": 7,
        "sent_at": time.time(),
        "handled": 40,
        **fields,
    }
    return json.dumps(beat).encode()


def test_status_shows_asks_answered_and_expired_from_heartbeats() -> None:
    """The heartbeat's counts reach `leveret status` (table and JSON, which the dashboard
    serves); a worker of a Leveret without asks shows 0; hostile values are no heartbeat."""
    now = time.time()
    [row], ignored = parse_workers([_heartbeat(answered=12, expired=3)], now)
    assert (row.answered, row.expired, ignored) == (12, 3, 0)
    [older], _ = parse_workers([_heartbeat()], now)
    assert (older.answered, older.expired) == (0, 0)
    hostile = [
        _heartbeat(id="a", answered=-1),
        _heartbeat(id="b", expired="many"),
        _heartbeat(id="c", answered=2**70),
        _heartbeat(id="d", expired=1.5),
        _heartbeat(id="e", answered=None),
    ]
    rows, ignored = parse_workers(hostile, now)
    assert (rows, ignored) == ([], len(hostile))

    snapshot = Snapshot("shop", now, [row], [], [], "memory")
    header, line = render(snapshot).splitlines()[3:5]
    columns = header.split()
    assert columns[columns.index("DEAD") + 1 : columns.index("DEAD") + 3] == [
        "ANSWERED",
        "EXPIRED",
    ]
    assert line[header.index("ANSWERED") :].split()[:2] == ["12", "3"]  # aligned columns
    [worker] = snapshot.to_json()["workers"]
    assert (worker["answered"], worker["expired"]) == (12, 3)


def _one(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in finished if s.name == name]
    return span


def test_an_ask_is_one_trace_ask_send_process(
    broker: Broker, namespace: str, spans: InMemorySpanExporter
) -> None:
    """The ask's CLIENT span is the parent of its request's PRODUCER span, itself the
    parent of the worker's CONSUMER span (through the request's ``traceparent``, on
    RabbitMQ as in memory); the ask span ends when the answer is taken, and records the
    error of an ask that failed."""
    with running(broker, Prices, threads=2):
        broker.ask(Prices, PriceAsked(sku="a"), timeout=10)
        finished = spans.get_finished_spans()
        ask = _one(finished, f"ask {ACTOR}")
        send = _one(finished, f"send {namespace}.{ACTOR}")
        process = _one(finished, f"process {ACTOR}")
        spans.clear()
        with pytest.raises(RemoteError):
            broker.ask(Prices, PriceAsked(sku="none"), timeout=10)
        failed = _one(spans.get_finished_spans(), f"ask {ACTOR}")

    assert (ask.kind, send.kind, process.kind) == (
        SpanKind.CLIENT,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    )
    assert ask.parent is None  # the test had no span: a new trace
    assert send.parent is not None
    assert send.parent.span_id == ask.context.span_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert {s.context.trace_id for s in (ask, send, process)} == {ask.context.trace_id}
    assert ask.attributes is not None
    assert send.attributes is not None
    assert ask.attributes["messaging.message.id"] == send.attributes["messaging.message.id"]
    assert ask.attributes["messaging.operation.name"] == "ask"
    # The ask spans its request's whole life: published, handled, answered.
    assert ask.start_time is not None
    assert send.start_time is not None
    assert ask.end_time is not None
    assert process.end_time is not None
    assert ask.start_time <= send.start_time
    assert process.end_time <= ask.end_time
    assert ask.status.status_code is StatusCode.UNSET

    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert str(failed.events[0].attributes["exception.type"]).endswith("RemoteError")


def test_an_ask_that_times_out_ends_its_span_with_the_timeout(
    namespace: str, spans: InMemorySpanExporter
) -> None:
    """No worker: the ask span ends at the deadline with `AskTimeout` recorded; nothing of
    the ask stays current afterwards (a later publish starts a trace of its own)."""
    broker = MemoryBroker(namespace=namespace)
    broker.declare(Prices)
    with pytest.raises(AskTimeout):
        broker.ask(Prices, PriceAsked(sku="t"), timeout=0.2)
    broker.send(Prices, PriceAsked(sku="after"))
    finished = spans.get_finished_spans()
    ask = _one(finished, f"ask {ACTOR}")
    sends = [s for s in finished if s.kind is SpanKind.PRODUCER]
    assert ask.status.status_code is StatusCode.ERROR
    assert len(sends) == 2
    request, later = sends
    assert request.parent is not None
    assert request.parent.span_id == ask.context.span_id
    assert later.parent is None


def test_ask_async_and_ask_all_have_their_spans(
    namespace: str, spans: InMemorySpanExporter
) -> None:
    """An awaited ask, and an ask by topic (named for the topic), each parent of their
    request's publish."""
    broker = MemoryBroker(namespace=namespace)

    async def ask_async() -> Price:
        answer: Price = await broker.ask_async(Prices, PriceAsked(sku="x"), timeout=10)
        return answer

    with running(broker, Prices, threads=2):
        assert asyncio.run(ask_async()).cents == 120
        answers = broker.ask_all(PriceAsked(sku="y"), timeout=10, expect=1)
    assert list(answers) == [ACTOR]
    finished = spans.get_finished_spans()
    asks = {s.name: s for s in finished if s.kind is SpanKind.CLIENT}
    assert set(asks) == {f"ask {ACTOR}", f"ask {PriceAsked.topic()}"}
    for ask in asks.values():
        [request] = [
            s
            for s in finished
            if s.kind is SpanKind.PRODUCER
            and s.parent is not None
            and s.parent.span_id == ask.context.span_id
        ]
        [handled] = [
            s
            for s in finished
            if s.parent is not None and s.parent.span_id == request.context.span_id
        ]
        assert handled.kind is SpanKind.CONSUMER
