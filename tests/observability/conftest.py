"""Fixtures of the observability tests: spans recorded by OpenTelemetry's in-memory
exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from leveret.services.observability import tracing

_PROVIDER = TracerProvider()
_EXPORTER = InMemorySpanExporter()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """OpenTelemetry's global tracer provider records into an in-memory exporter during the
    test, and is unset again afterwards: no other test sees spans or trace headers."""
    _set_provider(_PROVIDER)
    tracing.reset()
    _EXPORTER.clear()
    try:
        yield _EXPORTER
    finally:
        _set_provider(None)
        tracing.reset()
        _EXPORTER.clear()


def _set_provider(provider: TracerProvider | None) -> None:
    # OpenTelemetry lets a process set its provider once; its own test utilities reset
    # these two globals between tests, as this does.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)
