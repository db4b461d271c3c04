"""Tracing: W3C trace context in message headers, OpenTelemetry spans for publish and handle.

Optional: ``pip install 'leveret[tracing]'`` (opentelemetry-api). Without it nothing here
imports OpenTelemetry and `tracing()` is None, so publishing and handling pay one ``is None``.
With it, and whatever tracer provider the application set up (the SDK with an exporter, or
none: then spans are not recorded but the context still flows through):

- `Broker.publish`, `publish_many` and `send` run in a PRODUCER span ``send <exchange>``
  and put its context in the message's ``traceparent`` (and ``tracestate``) headers;
  `Broker.prepare` (on-commit and outbox publishing) does the same with a short ``create``
  span when the message is built, since it is sent later;
- an ask (`Broker.ask`, ``ask_async``, ``ask_all``) runs in a CLIENT span ``ask <actor>``
  (``ask <topic>`` for ``ask_all``) from before its request is published to the ask's end
  (``after_ask``: the answer, or the error recorded); the request's PRODUCER span is its
  child;
- a worker handles each delivery in a CONSUMER span ``process <queue>`` whose parent is
  the context in the message's headers, current while the handler runs: a ``ctx.publish``
  inside it is its child, and the chain publish → handle → publish → handle is one trace
  (ask → send → process, for a request);
- while a handler runs, log lines carry ``trace_id`` and ``span_id``.

Attributes follow OpenTelemetry's messaging semantic conventions (``messaging.system`` =
``rabbitmq``, ``messaging.operation.type``, ``messaging.destination.name``,
``messaging.rabbitmq.destination.routing_key``, ``messaging.message.id``,
``messaging.message.conversation_id``). ``LEVERET_TRACING=off`` turns all of it off.
"""

from __future__ import annotations

import contextvars
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import structlog

from leveret.services.middleware import Middleware, Publishing

if TYPE_CHECKING:
    from leveret.schemas.envelope import Envelope
    from leveret.services.delivery import Outcome

TRACING_ENV = "LEVERET_TRACING"
TRACE_HEADERS = ("traceparent", "tracestate")

_UNSET: Any = object()
_tracing: Tracing | None = _UNSET
_lock = threading.Lock()


def tracing() -> Tracing | None:
    """The process's `Tracing`, or None when OpenTelemetry is not installed or turned off."""
    global _tracing
    found = _tracing
    if found is _UNSET:
        with _lock:
            if _tracing is _UNSET:
                _tracing = _make()
            found = _tracing
    return found


def _make() -> Tracing | None:
    if os.environ.get(TRACING_ENV, "").strip().lower() in ("0", "off", "false", "no"):
        return None
    if importlib.util.find_spec("opentelemetry") is None:
        return None
    try:
        if importlib.util.find_spec("opentelemetry.trace") is None:
            return None
    except ModuleNotFoundError:
        return None
    return Tracing()


def reset() -> None:
    """Look again for OpenTelemetry and `TRACING_ENV` on the next use (tests)."""
    global _tracing
    with _lock:
        _tracing = _UNSET


class Tracing:
    """Spans and propagation through OpenTelemetry's API (which must be installed)."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode

        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._producer = SpanKind.PRODUCER
        self._consumer = SpanKind.CONSUMER
        self._client = SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self._status = Status
        self._proxy = ProxyTracerProvider
        self._error_code = StatusCode.ERROR
        try:
            self._version = version("leveret")
        except PackageNotFoundError:
            self._version = "0+unknown"

    def _tracer(self) -> Any:
        # Asked each time: the application may set its provider after the first message.
        return self._trace.get_tracer("leveret", self._version)

    def recording(self) -> bool:
        """Whether the application set a tracer provider (else no span is made: only the
        context that came with a message is passed on to the messages its handler sends)."""
        return not isinstance(self._trace.get_tracer_provider(), self._proxy)

    @contextmanager
    def publishing(
        self, operation: str, exchange: str, routing_key: str, count: int
    ) -> Iterator[None]:
        """A PRODUCER span around publishing `count` messages (current inside)."""
        if not self.recording():
            yield
            return
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
            "messaging.destination.name": exchange,
            "messaging.rabbitmq.destination.routing_key": routing_key,
        }
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        with self._tracer().start_as_current_span(
            f"send {exchange or routing_key}", kind=self._producer, attributes=attributes
        ):
            yield

    @contextmanager
    def asking(self, operation: str, exchange: str, routing_key: str) -> Iterator[Any]:
        """A CLIENT span ``ask <routing_key>`` around an ask, current inside, so that its
        request's PRODUCER span is its child; yields the span (None when not recording)."""
        if not self.recording():
            yield None
            return
        with self._tracer().start_as_current_span(
            f"ask {routing_key}",
            kind=self._client,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.name": operation,
                "messaging.destination.name": exchange,
                "messaging.rabbitmq.destination.routing_key": routing_key,
            },
        ) as span:
            yield span

    def creating(self, exchange: str, routing_key: str) -> dict[str, str]:
        """Trace headers of a message built now and sent later, from a short ``create`` span."""
        if not self.recording():
            return self.headers()
        with self._tracer().start_as_current_span(
            f"create {exchange or routing_key}",
            kind=self._producer,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "create",
                "messaging.destination.name": exchange,
                "messaging.rabbitmq.destination.routing_key": routing_key,
            },
        ):
            return self.headers()

    def headers(self) -> dict[str, str]:
        """The current context as message headers (empty without a valid span)."""
        if not self._trace.get_current_span().get_span_context().is_valid:
            return {}
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier)
        return {key: value for key, value in carrier.items() if key in TRACE_HEADERS}

    def message_attributes(self, message_id: str, correlation_id: str | None) -> None:
        """Record one message's ids on the current (single-message) span."""
        span = self._trace.get_current_span()
        if span.is_recording():
            span.set_attribute("messaging.message.id", message_id)
            if correlation_id:
                span.set_attribute("messaging.message.conversation_id", correlation_id)

    @contextmanager
    def handling(
        self,
        queue: str,
        headers: Mapping[str, Any],
        message_id: str,
        correlation_id: str | None,
    ) -> Iterator[Callable[[str, BaseException | None], None]]:
        """A CONSUMER span ``process <queue>`` whose parent is the context in `headers`.

        Yields a callable to record the outcome: ``(fate, error)``; a fate other than
        ``ack`` marks the span as an error. Log lines inside carry ``trace_id``/``span_id``.
        """
        carrier = {
            key: value
            for key in TRACE_HEADERS
            if isinstance(value := headers.get(key), str) and len(value) <= 512
        }
        parent = self._propagate.extract(carrier) if carrier else None
        if not self.recording():
            yield from self._passing_on(parent)
            return
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": message_id,
        }
        if correlation_id:
            attributes["messaging.message.conversation_id"] = correlation_id
        with self._tracer().start_as_current_span(
            f"process {queue}",
            context=parent,
            kind=self._consumer,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            context = span.get_span_context()
            bound = context.is_valid
            if bound:
                structlog.contextvars.bind_contextvars(
                    trace_id=format(context.trace_id, "032x"),
                    span_id=format(context.span_id, "016x"),
                )

            def outcome(fate: str, error: BaseException | None) -> None:
                span.set_attribute("leveret.outcome", fate)
                if fate != "ack":
                    if error is not None:
                        span.record_exception(error)
                    span.set_status(self._status(self._error_code, fate))

            try:
                yield outcome
            finally:
                if bound:
                    structlog.contextvars.unbind_contextvars("trace_id", "span_id")

    def _passing_on(self, parent: Any) -> Iterator[Callable[[str, BaseException | None], None]]:
        """No provider: no span; the message's context (if any) is current while its
        handler runs, so the messages it sends carry it on."""
        if parent is None:
            yield _ignore
            return
        token = self._context.attach(parent)
        context = self._trace.get_current_span().get_span_context()
        if context.is_valid:
            structlog.contextvars.bind_contextvars(trace_id=format(context.trace_id, "032x"))
        try:
            yield _ignore
        finally:
            if context.is_valid:
                structlog.contextvars.unbind_contextvars("trace_id")
            self._context.detach(token)


def _ignore(_fate: str, _error: BaseException | None) -> None:
    """The outcome of a message handled without a span."""


def _exit(manager: AbstractContextManager[Any], error: BaseException | None) -> None:
    """Leave a span's context manager, ended by `error` (recorded on the span) if any."""
    if error is None:
        manager.__exit__(None, None, None)
    else:
        manager.__exit__(type(error), error, error.__traceback__)


_OpenPublish = tuple[Publishing, AbstractContextManager[None]]


class _OpenAsk:
    """An ask's span, open from its request's ``before_publish`` to its ``after_ask``
    (matched by the request's message id, known once the request is built)."""

    __slots__ = ("manager", "message_id", "publishing", "span")

    def __init__(self, publishing: Publishing, manager: AbstractContextManager[Any]) -> None:
        self.publishing = publishing
        self.manager = manager
        self.span: Any = manager.__enter__()
        self.message_id: str | None = None


_OpenHandle = tuple[
    "Envelope",
    AbstractContextManager[Callable[[str, BaseException | None], None]],
    Callable[[str, BaseException | None], None],
]
_publishing: contextvars.ContextVar[tuple[_OpenPublish, ...]] = contextvars.ContextVar(
    "leveret_tracing_publishing", default=()
)
_asking: contextvars.ContextVar[tuple[_OpenAsk, ...]] = contextvars.ContextVar(
    "leveret_tracing_asking", default=()
)
_handling: contextvars.ContextVar[tuple[_OpenHandle, ...]] = contextvars.ContextVar(
    "leveret_tracing_handling", default=()
)


class TracingMiddleware(Middleware):
    """Tracing as middleware: every broker has it first in its chain.

    Each hook asks `tracing()` for the process's `Tracing` (None: it does nothing), so that
    OpenTelemetry set up, or `TRACING_ENV` changed, after the broker was made still counts.
    The spans it opens in a before-hook are kept in context variables (per thread, per
    asyncio task) until the matching after-hook closes them; an ask's span, opened with its
    request's ``before_publish``, until its ``after_ask`` (or its request's failed
    ``after_publish``: then no ``after_ask`` comes).
    """

    def before_publish(self, publishing: Publishing) -> None:
        """Open the PRODUCER span (``create`` for a message sent later) and put its
        context in the messages' headers."""
        tracer = tracing()
        if tracer is None:
            return
        if publishing.operation == "publish_prepared":
            return  # its trace context was put in its headers when it was built
        if publishing.operation == "prepare":
            publishing.headers.update(tracer.creating(publishing.exchange, publishing.routing_key))
            return
        if publishing.operation in ("ask", "ask_all"):  # the ask's span: the request's parent
            manager = tracer.asking(
                publishing.operation, publishing.exchange, publishing.routing_key
            )
            _asking.set((*_asking.get(), _OpenAsk(publishing, manager)))
        span = tracer.publishing(
            publishing.operation, publishing.exchange, publishing.routing_key, publishing.count
        )
        span.__enter__()
        _publishing.set((*_publishing.get(), (publishing, span)))
        publishing.headers.update(tracer.headers())

    def after_publish(self, publishing: Publishing, error: BaseException | None) -> None:
        """Record a single message's ids on its span, and close the span; a request's
        ask span stays open for `after_ask`, unless the request failed."""
        try:
            self._published(publishing, error)
        finally:
            if publishing.operation in ("ask", "ask_all"):
                self._request_published(publishing, error)

    def _published(self, publishing: Publishing, error: BaseException | None) -> None:
        opened = _publishing.get()
        if not opened or opened[-1][0] is not publishing:
            return
        _publishing.set(opened[:-1])
        span = opened[-1][1]
        tracer = tracing()
        try:
            if tracer is not None and error is None and len(publishing.message_ids) == 1:
                tracer.message_attributes(publishing.message_ids[0], publishing.correlation_id)
        finally:
            _exit(span, error)

    def _request_published(self, publishing: Publishing, error: BaseException | None) -> None:
        """The ask's request was handed over (its span waits for `after_ask`), or not: the
        ask ends here, with `error`."""
        opened = _asking.get()
        if not opened or opened[-1].publishing is not publishing:
            return
        ask = opened[-1]
        if error is not None or len(publishing.message_ids) != 1:
            _asking.set(opened[:-1])
            _exit(ask.manager, error)
            return
        ask.message_id = publishing.message_ids[0]
        if ask.span is not None and ask.span.is_recording():
            ask.span.set_attribute("messaging.message.id", ask.message_id)
            if publishing.correlation_id:
                ask.span.set_attribute(
                    "messaging.message.conversation_id", publishing.correlation_id
                )

    def after_ask(
        self,
        actor: str,
        envelope: Envelope | None,
        error: BaseException | None,
        duration_s: float,
    ) -> None:
        """Close the ask's span, named for `actor`, with `error` recorded (if any)."""
        opened = _asking.get()
        if envelope is None:  # failed before its request was built: no span was opened
            return
        found = [i for i, ask in enumerate(opened) if ask.message_id == envelope.message_id]
        if not found:
            return
        index = found[-1]
        ask = opened[index]
        _asking.set((*opened[:index], *opened[index + 1 :]))
        try:
            if ask.span is not None and ask.span.is_recording():
                ask.span.update_name(f"ask {actor}")
        finally:
            _exit(ask.manager, error)

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        """Open the CONSUMER span ``process <queue>``, child of the message's context."""
        tracer = tracing()
        if tracer is None:
            return
        span = tracer.handling(
            actor, envelope.headers, envelope.message_id, envelope.correlation_id
        )
        record = span.__enter__()
        _handling.set((*_handling.get(), (envelope, span, record)))

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        """Record the outcome on the span (none: handling was cut off) and close it."""
        opened = _handling.get()
        if not opened or opened[-1][0] is not envelope:  # no span was opened for it
            return
        _handling.set(opened[:-1])
        _envelope, span, record = opened[-1]
        try:
            if outcome is not None:
                record(outcome.fate, outcome.error)
        finally:
            span.__exit__(None, None, None)
