"""Tracing: one trace from publish through handle, ctx.publish and the next handle.

On the real RabbitMQ, with OpenTelemetry's SDK and its in-memory exporter: publishing a
`Start` makes a PRODUCER span; the worker's CONSUMER span for it is that span's child; the
`Relayed` its handler publishes is the consumer span's child; the last handler's span is
that one's child. One trace id throughout, and the handler's log lines carry it.
"""

from __future__ import annotations

import json

import pika
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from leveret.actors import actors_in
from leveret.services import RabbitBroker
from leveret.services.observability import tracing
from leveret.services.testing import captured_logs
from leveret.services.topology import naming
from tests.observed_actors import Counted, Ends, Relay, Start, Work
from tests.support import WorkerProcess, running, wait_until

pytestmark = [pytest.mark.rabbitmq]


def _named(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in finished if s.name == name]
    return span


def test_one_trace_from_publish_to_the_last_handler(
    rabbit_broker: RabbitBroker, spans: InMemorySpanExporter
) -> None:
    ns = rabbit_broker.namespace
    with captured_logs() as events, running(rabbit_broker, Relay, Ends, threads=2):
        message_id = rabbit_broker.publish(Start(n=1))
        wait_until(
            lambda: any(s.name == f"process {Ends.queue}" for s in spans.get_finished_spans()),
            20,
            "the last handler's span",
        )
    finished = spans.get_finished_spans()
    sends = [s for s in finished if s.name == f"send {naming.events_exchange(ns)}"]
    [publish] = [s for s in sends if s.parent is None]  # the test had no span: a new trace
    handle = _named(finished, f"process {Relay.queue}")
    inner = [s for s in sends if s is not publish]
    last = _named(finished, f"process {Ends.queue}")
    assert publish.kind is SpanKind.PRODUCER
    assert last.kind is SpanKind.CONSUMER
    assert publish.attributes is not None
    assert publish.attributes["messaging.system"] == "rabbitmq"
    assert publish.attributes["messaging.operation.type"] == "send"
    assert publish.attributes["messaging.rabbitmq.destination.routing_key"] == "obs.start"
    assert publish.attributes["messaging.message.id"] == message_id
    assert handle.attributes is not None
    assert handle.attributes["messaging.operation.type"] == "process"
    assert handle.attributes["messaging.message.id"] == message_id

    # Parent links: publish <- handle <- ctx.publish <- handle.
    [relayed] = [
        s for s in finished if s.parent is not None and s.parent.span_id == handle.context.span_id
    ]
    assert relayed.kind is SpanKind.PRODUCER
    assert handle.parent is not None
    assert handle.parent.span_id == publish.context.span_id
    assert last.parent is not None
    assert last.parent.span_id == relayed.context.span_id
    assert inner == [relayed]
    trace_ids = {s.context.trace_id for s in (publish, handle, relayed, last)}
    assert trace_ids == {publish.context.trace_id}

    # The handler's log line carries the trace.
    [ended] = [e for e in events if e["event"] == "chain_ended"]
    assert ended["trace_id"] == format(publish.context.trace_id, "032x")
    assert ended["span_id"] == format(last.context.span_id, "016x")


def test_a_failing_handler_marks_its_span(
    rabbit_broker: RabbitBroker, spans: InMemorySpanExporter
) -> None:
    with running(rabbit_broker, Counted, threads=1):
        rabbit_broker.publish(Work(n=1, kind="broken"))
        wait_until(
            lambda: (
                len([s for s in spans.get_finished_spans() if s.name == "process counted"]) == 2
            ),
            20,
            "both attempts' spans",
        )
    attempts = [s for s in spans.get_finished_spans() if s.name == "process counted"]
    assert {s.status.status_code for s in attempts} == {StatusCode.ERROR}
    assert {s.attributes["leveret.outcome"] for s in attempts if s.attributes} == {
        "retry",
        "dead_letter",
    }
    # The retry is the same message: both attempts belong to the publisher's trace.
    assert len({s.context.trace_id for s in attempts}) == 1


def test_tracing_can_be_turned_off(
    rabbit_broker: RabbitBroker, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tracing.TRACING_ENV, "off")
    tracing.reset()
    try:
        with running(rabbit_broker, Counted, threads=1) as worker:
            rabbit_broker.publish(Work(n=1))
            wait_until(lambda: worker.stats.handled == 1, 20, "the message handled")
        assert spans.get_finished_spans() == ()
    finally:
        monkeypatch.delenv(tracing.TRACING_ENV)
        tracing.reset()


def test_without_a_provider_the_context_is_passed_on(
    rabbit_broker: RabbitBroker, rabbit_url: str
) -> None:
    """A worker process with OpenTelemetry installed and no provider makes no span, but the
    trace context a foreign client sent reaches the messages its handlers send (and their
    log lines); a malformed ``traceparent`` is ignored."""
    rabbit_broker.declare(*actors_in(["tests.observed_actors"]))
    worker = WorkerProcess(["tests.observed_actors"], rabbit_broker.namespace)
    try:
        worker.wait_consuming()
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        connection = pika.BlockingConnection(pika.URLParameters(rabbit_url))
        try:
            channel = connection.channel()
            queue = naming.queue_name(rabbit_broker.namespace, Relay.queue)
            for n, traceparent in ((1, f"00-{trace_id}-00f067aa0ba902b7-01"), (2, "x" * 600)):
                channel.basic_publish(
                    "",
                    queue,
                    json.dumps({"n": n}).encode(),
                    pika.BasicProperties(
                        type="obs.start", delivery_mode=2, headers={"traceparent": traceparent}
                    ),
                )
        finally:
            connection.close()

        def ended() -> list[dict[str, object]]:
            return [
                record
                for line in worker.log().splitlines()
                if '"chain_ended"' in line
                for record in [json.loads(line)]
            ]

        wait_until(lambda: len(ended()) == 2, 20, "both chains to end")
        by_n = {record["n"]: record for record in ended()}
        assert by_n[1]["trace_id"] == trace_id
        assert "trace_id" not in by_n[2]
    finally:
        worker.stop_gracefully()
