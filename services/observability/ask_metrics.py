"""Prometheus metrics of request/reply, a part of `Metrics`.

The caller's side (``after_ask``, ``reply_dropped``): asks that ended, by actor and result,
their latency, and answers dropped because nobody waited for them. The worker's side
(``after_handle``): requests it answered, by the answer's status, and requests it took past
their deadline. docs/observability.md lists them with the PromQL that reads them.

Labels stay bounded: an ask's ``actor`` is a name from the caller's own code (an actor's
queue, or the topic of an ``ask_all``), a request's ``actor`` a queue the worker runs;
``result``, ``status`` and ``reason`` are Leveret's own words, never text from the wire.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from leveret.schemas.errors import (
    AskInterrupted,
    AskTimeout,
    BrokerUnavailable,
    InvalidReply,
    PublishError,
    RemoteError,
)
from leveret.services.delivery import Outcome

# The first class an error is an instance of names its result: subclasses before their base.
_RESULTS: tuple[tuple[type[BaseException], str], ...] = (
    (AskTimeout, "timeout"),
    (RemoteError, "remote_error"),
    (InvalidReply, "invalid_reply"),
    (AskInterrupted, "interrupted"),
    (BrokerUnavailable, "unavailable"),
    (PublishError, "publish_error"),
    (asyncio.CancelledError, "cancelled"),
)
ASK_RESULTS = frozenset({"answered", "other", *(result for _cls, result in _RESULTS)})
"""Every value of the ``result`` label."""
DROP_REASONS = frozenset({"late", "unmatched"})
"""The reasons ``reply_dropped`` gives; anything else is counted as ``other``."""


def ask_result(error: BaseException | None) -> str:
    """The ``result`` label of an ask that ended with `error` (None: ``answered``).

    ``timeout`` (`AskTimeout`), ``remote_error`` (`RemoteError`: the actor dead-lettered
    the request, or gave no valid answer), ``invalid_reply`` (`InvalidReply`),
    ``interrupted`` (`AskInterrupted`), ``unavailable`` (`BrokerUnavailable`: nothing was
    sent), ``publish_error`` (another `PublishError`: no queue, refused, not confirmed),
    ``cancelled`` (an awaited ask cancelled) or ``other``.
    """
    if error is None:
        return "answered"
    for cls, result in _RESULTS:
        if isinstance(error, cls):
            return result
    return "other"


class AskMetrics:
    """The request/reply metrics of one process, registered in `registry`.

    Args:
        registry: The registry of the process's `Metrics`.
        slot: The ``slot`` label.
        buckets: The latency histogram's buckets (the handlers' own: 1 ms to 5 min).
    """

    def __init__(self, registry: CollectorRegistry, slot: str, buckets: tuple[float, ...]) -> None:
        self.slot = slot
        self.asks = Counter(
            "leveret_asks",
            "Asks this process made that ended, by actor asked and result.",
            ("actor", "result", "slot"),
            registry=registry,
        )
        self.duration = Histogram(
            "leveret_ask_duration_seconds",
            "Time from publishing a request to its end (the answer, an error, the deadline).",
            ("actor", "slot"),
            buckets=buckets,
            registry=registry,
        )
        self.dropped_replies = Counter(
            "leveret_replies_dropped",
            "Answers that arrived for no waiting ask: late (its caller gave up) or unmatched.",
            ("reason", "slot"),
            registry=registry,
        )
        self.answered = Counter(
            "leveret_requests_answered",
            "Requests a worker answered: with the handler's answer (ok) or its error (error).",
            ("actor", "status", "slot"),
            registry=registry,
        )
        self.expired = Counter(
            "leveret_requests_expired",
            "Requests a worker took (or was still handling) past their deadline: acked, "
            "unanswered.",
            ("actor", "slot"),
            registry=registry,
        )
        # Label children cached: looking one up in prometheus-client costs a lock and a dict.
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        for reason in sorted(DROP_REASONS):
            self._child(self.dropped_replies, "dropped", reason)  # shown at 0 from the start

    def asked(self, actor: str, error: BaseException | None, duration_s: float) -> None:
        """An ask of `actor` ended after `duration_s`, answered or with `error`."""
        self._child(self.asks, "asks", actor, ask_result(error)).inc()
        self._child(self.duration, "duration", actor).observe(max(0.0, duration_s))

    def dropped(self, reason: str) -> None:
        """An answer nobody waits for was dropped."""
        self._child(
            self.dropped_replies, "dropped", reason if reason in DROP_REASONS else "other"
        ).inc()

    def handled(self, actor: str, outcome: Outcome) -> None:
        """The worker's outcome of a delivery to `actor`: counted if it answers a request
        or found it expired."""
        if outcome.expired:
            self._child(self.expired, "expired", actor).inc()
        elif outcome.reply is not None:
            status = "ok" if outcome.reply.status == "ok" else "error"
            self._child(self.answered, "answered", actor, status).inc()

    def _child(self, metric: Any, kind: str, *labels: str) -> Any:
        key = (kind, *labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = metric.labels(*labels, self.slot)
        return child
