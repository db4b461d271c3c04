"""Prometheus metrics of a worker process, served at ``/metrics`` on its health port.

One `Metrics` per worker process, a `Middleware` of the worker's broker: it sees every
message the worker handles (``before_handle``, ``after_handle``), every confirm of a
message the process publishes (``publish_confirmed``), every ask the process makes and
every answer it drops (``after_ask``, ``reply_dropped``: `ask_metrics`), and samples the
worker's connection once a second while the worker runs (``worker_started`` to
``worker_stopped``).
Names follow Prometheus conventions (base units, ``_total`` for counters);
docs/observability.md lists them with the PromQL that reads them.

Labels are bounded whatever arrives from the wire: ``actor`` is a queue the worker runs,
``topic`` a topic one of its handlers takes (anything else counts as ``other``), ``reason``
one of Leveret's own dead-letter reasons. Every series also carries ``slot``: the child's
number under ``leveret worker --processes N`` (``0`` for a single process), so one child can
be told apart and ``sum without (slot)`` gives the worker's total.

With ``--processes N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for its children:
each child writes its values to files there (prometheus-client's multiprocess mode) and the
supervisor's port serves them merged (`multiprocess_exposition`). A restarted child keeps
adding to its slot's counters, so they never go backwards.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from leveret.schemas import wire
from leveret.schemas.envelope import Envelope
from leveret.services import config
from leveret.services.delivery import Outcome
from leveret.services.middleware import Middleware
from leveret.services.observability.ask_metrics import AskMetrics
from leveret.services.observability.logs import get_logger
from leveret.services.runtime.worker import Worker

log = get_logger("leveret.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own variable: where children of a supervisor write their values."""
SLOT_ENV = config.WORKER_SLOT_ENV
"""The child's slot under a supervisor (its ``slot`` label)."""

SAMPLE_INTERVAL_S = 1.0
OTHER = "other"
"""The ``topic`` or ``reason`` label of a value outside the bounded set."""

# Handler durations from 1 ms to 5 min: fast handlers and slow ones both get resolution.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
CONFIRM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0)

DEAD_LETTER_REASONS = frozenset(
    {
        "handler_error",
        "retries_exhausted",
        "rejected",
        "invalid_retry",
        "internal_error",
        "malformed_body",
        "invalid_message",
        "unknown_topic",
        "too_large",
        "decode_error",
        "delivery_limit",
        "retry_not_stored",
    }
)


def slot_label() -> str:
    """This process's ``slot`` label: its supervisor's slot number, else ``0``."""
    raw = os.environ.get(SLOT_ENV, "0")
    return raw if raw.isdigit() else "0"


class Metrics(Middleware):
    """The metrics of one worker process, in their own registry.

    Give it to the worker's broker (``Broker(..., middleware=[metrics])``): it counts what
    the broker's workers handle and publish, the asks it makes and the requests its workers
    answer (`asking`), and samples a worker while it runs.

    Args:
        actors: Queue name (the ``actor`` label, without namespace) → topics its handlers
            take; any other topic is counted as ``other``.
        slot: The ``slot`` label (`slot_label` by default).
        registry: Where the metrics are registered; a new registry by default.
    """

    def __init__(
        self,
        actors: Mapping[str, Iterable[str]],
        *,
        slot: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.slot = slot if slot is not None else slot_label()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._topics = {actor: frozenset(topics) for actor, topics in actors.items()}
        r = self.registry
        labels = ("actor", "topic", "slot")
        self.handled = Counter(
            "leveret_messages_handled",
            "Deliveries a worker finished handling, whatever their outcome.",
            labels,
            registry=r,
        )
        self.succeeded = Counter(
            "leveret_messages_succeeded",
            "Deliveries whose handler returned (acked).",
            labels,
            registry=r,
        )
        self.failed = Counter(
            "leveret_messages_failed",
            "Deliveries that ended in an error: retried or dead-lettered.",
            labels,
            registry=r,
        )
        self.retried = Counter(
            "leveret_messages_retried",
            "Deliveries whose handler failed and that were published again for a retry.",
            labels,
            registry=r,
        )
        self.dead_lettered = Counter(
            "leveret_messages_dead_lettered",
            "Deliveries sent to the actor's dead-letter queue, by reason.",
            (*labels, "reason"),
            registry=r,
        )
        self.duration = Histogram(
            "leveret_handler_duration_seconds",
            "Time from taking a delivery to knowing its outcome (decode, handler, policy).",
            labels,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "leveret_messages_in_flight",
            "Handlers running now.",
            ("actor", "slot"),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.published = Counter(
            "leveret_messages_published",
            "Messages the broker confirmed (publish, send, retries excluded).",
            ("slot",),
            registry=r,
        )
        self.confirm_seconds = Histogram(
            "leveret_publish_confirm_seconds",
            "Time from writing a message to the broker's confirm (or nack).",
            ("slot",),
            buckets=CONFIRM_BUCKETS,
            registry=r,
        )
        self.nacks = Counter(
            "leveret_publish_nacks",
            "Messages the broker refused (nack).",
            ("slot",),
            registry=r,
        )
        self.returns = Counter(
            "leveret_publish_returns",
            "Messages the broker returned: no queue took them (a fan-out without subscribers "
            "or a send to a missing queue).",
            ("slot",),
            registry=r,
        )
        self.connected = Gauge(
            "leveret_worker_connected",
            "1 while the worker's connection to the broker is open.",
            ("slot",),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.consuming = Gauge(
            "leveret_worker_consuming",
            "1 while the worker consumes every one of its queues.",
            ("slot",),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.reconnects = Counter(
            "leveret_worker_reconnects",
            "Times the worker connected again after losing its connection.",
            ("slot",),
            registry=r,
        )
        self.asking = AskMetrics(r, self.slot, DURATION_BUCKETS)
        """Request/reply: asks made, answers dropped, requests answered and expired."""
        # Label children cached per (actor, topic): looking one up costs a lock and a dict.
        self._children: dict[tuple[str, str], _ActorSeries] = {}
        self._children_lock = threading.Lock()
        self._reasons: dict[tuple[str, str, str], Any] = {}
        self._publish_series = (
            self.published.labels(self.slot),
            self.confirm_seconds.labels(self.slot),
            self.nacks.labels(self.slot),
            self.returns.labels(self.slot),
        )
        self.reconnects.labels(self.slot)  # shown at 0 from the start
        self._in_flight: dict[str, Any] = {}
        for actor, topics in self._topics.items():
            self._in_flight[actor] = self.in_flight.labels(actor, self.slot)
            for topic in topics:
                self._series(actor, topic)  # every series shows from the start, at 0
        # Per handler thread, plain counts that only that thread writes: no lock per message.
        # `flush` adds them up into the Prometheus metrics (every second and at each scrape).
        self._local = threading.local()
        self._threads: list[_ThreadCounts] = []
        self._threads_lock = threading.Lock()
        self._flushed: dict[tuple[str, str], list[int]] = {}
        self._flush_lock = threading.Lock()
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._connections_seen = 0
        self._sample_lock = threading.Lock()
        self._worker: Worker | None = None

    # Middleware: handling ------------------------------------------------------------

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        """A handler starts (handler thread, or the worker's event loop)."""
        running = self._mine().in_flight
        running[actor] = running.get(actor, 0) + 1

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        """A handler finished with `outcome` (where `before_handle` ran); a handler cut
        off (no outcome) leaves the in-flight gauge and counts nothing."""
        mine = self._mine()
        mine.in_flight[actor] = mine.in_flight.get(actor, 0) - 1
        if outcome is None:
            return
        if outcome.reply is not None or outcome.expired:  # a request: answered, or too late
            self.asking.handled(actor, outcome)
        topics = self._topics.get(actor, frozenset())
        topic = outcome.envelope.topic
        if topic not in topics:
            topic = OTHER  # from the wire: never a label of its own
        key = (actor, topic)
        counts = mine.counts.get(key)
        if counts is None:
            counts = mine.counts[key] = [0, 0, 0, 0]
        counts[_HANDLED] += 1
        self._series(actor, topic).duration.observe(duration_s)
        if outcome.fate == "ack":
            counts[_SUCCEEDED] += 1
            return
        counts[_FAILED] += 1
        if outcome.fate == "retry":
            counts[_RETRIED] += 1
            return
        reason = outcome.headers.get(wire.ERROR_REASON)
        if reason not in DEAD_LETTER_REASONS:
            reason = OTHER
        reason_key = (actor, topic, reason)
        child = self._reasons.get(reason_key)
        if child is None:
            child = self.dead_lettered.labels(actor, topic, self.slot, reason)
            self._reasons[reason_key] = child
        child.inc()

    def _mine(self) -> _ThreadCounts:
        try:
            mine: _ThreadCounts = self._local.counts
        except AttributeError:
            mine = self._local.counts = _ThreadCounts()
            with self._threads_lock:
                self._threads.append(mine)
        return mine

    def flush(self) -> None:
        """Add the handler threads' counts up into the metrics (and set in flight)."""
        with self._flush_lock:
            with self._threads_lock:
                threads = list(self._threads)
            totals: dict[tuple[str, str], list[int]] = {}
            running: dict[str, int] = dict.fromkeys(self._in_flight, 0)
            for counts in threads:
                for key, values in list(counts.counts.items()):  # a copy: it may grow meanwhile
                    total = totals.setdefault(key, [0, 0, 0, 0])
                    for index, value in enumerate(list(values)):
                        total[index] += value
                for actor, value in list(counts.in_flight.items()):
                    running[actor] = running.get(actor, 0) + value
            for key, total in totals.items():
                done = self._flushed.setdefault(key, [0, 0, 0, 0])
                series = self._series(*key)
                for index, counter in enumerate(
                    (series.handled, series.succeeded, series.failed, series.retried)
                ):
                    if total[index] > done[index]:
                        counter.inc(total[index] - done[index])
                        done[index] = total[index]
            for actor, value in running.items():
                gauge = self._in_flight.get(actor)
                if gauge is not None:
                    gauge.set(max(0, value))

    def _series(self, actor: str, topic: str) -> _ActorSeries:
        key = (actor, topic)
        series = self._children.get(key)
        if series is None:
            with self._children_lock:
                series = self._children.get(key)
                if series is None:
                    series = self._children[key] = _ActorSeries(self, actor, topic)
        return series

    # Middleware: publishing ----------------------------------------------------------

    def publish_confirmed(self, ok: bool, returned: bool, confirm_s: float | None) -> None:
        """The broker confirmed (or nacked) one message (the publisher's I/O thread)."""
        published, confirm_seconds, nacks, returns = self._publish_series
        if confirm_s is not None:
            confirm_seconds.observe(confirm_s)
        if not ok:
            nacks.inc()
            return
        published.inc()
        if returned:
            returns.inc()

    # Middleware: asking --------------------------------------------------------------

    def after_ask(
        self,
        actor: str,
        envelope: Envelope | None,
        error: BaseException | None,
        duration_s: float,
    ) -> None:
        """An ask of this process ended (the asking thread): counted by result, timed."""
        self.asking.asked(actor, error, duration_s)

    def reply_dropped(self, reason: str) -> None:
        """An answer nobody waits for was dropped (``late`` or ``unmatched``)."""
        self.asking.dropped(reason)

    # Middleware: the worker's life, and its connection sampled ------------------------

    def worker_started(self, worker: Worker) -> None:
        """Sample `worker` while it runs (`watch`), unless already watching one."""
        if self._sampler is None:
            self.watch(worker)

    def worker_stopped(self, worker: Worker) -> None:
        """Stop sampling and flush the last counts (`close`)."""
        if worker is self._worker:
            self.close()

    def watch(self, worker: Worker) -> None:
        """Sample the worker's connection every second in a daemon thread, until `close`
        (and at each scrape of `exposition`)."""
        self._worker = worker
        self._sampler = threading.Thread(
            target=self._sample_loop, args=(worker,), name="leveret-metrics", daemon=True
        )
        self._sampler.start()

    def sample(self, worker: Worker) -> None:
        """Update the connection gauges and the reconnect counter once; `flush`."""
        with self._sample_lock:
            self._sample(worker)
        self.flush()

    def _sample(self, worker: Worker) -> None:
        connected, connections = worker.consumer.presence.connection_state()
        self.connected.labels(self.slot).set(1 if connected else 0)
        self.consuming.labels(self.slot).set(1 if worker.consuming.is_set() else 0)
        if connections > self._connections_seen:
            if self._connections_seen > 0 or connections > 1:
                again = connections - max(self._connections_seen, 1)
                self.reconnects.labels(self.slot).inc(again)
            self._connections_seen = connections

    def _sample_loop(self, worker: Worker) -> None:
        while not self._stop.is_set():
            try:
                self.sample(worker)
            except Exception:  # keep sampling; the gauges go stale meanwhile
                log.exception("metrics_sample_failed")
            self._stop.wait(SAMPLE_INTERVAL_S)

    def close(self) -> None:
        """Stop sampling; flush the last counts."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(5)
        self.flush()

    def exposition(self) -> bytes:
        """This process's metrics in Prometheus's text format (sampled and flushed now)."""
        if self._worker is not None:
            self.sample(self._worker)
        else:
            self.flush()
        return generate_latest(self.registry)


_HANDLED, _SUCCEEDED, _FAILED, _RETRIED = range(4)


class _ThreadCounts:
    """One handler thread's counts, written by that thread only."""

    __slots__ = ("counts", "in_flight")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], list[int]] = {}
        self.in_flight: dict[str, int] = {}


class _ActorSeries:
    """The label children of one (actor, topic)."""

    __slots__ = ("duration", "failed", "handled", "retried", "succeeded")

    def __init__(self, metrics: Metrics, actor: str, topic: str) -> None:
        slot = metrics.slot
        self.handled = metrics.handled.labels(actor, topic, slot)
        self.succeeded = metrics.succeeded.labels(actor, topic, slot)
        self.failed = metrics.failed.labels(actor, topic, slot)
        self.retried = metrics.retried.labels(actor, topic, slot)
        self.duration = metrics.duration.labels(actor, topic, slot)


def multiprocess_exposition(directory: str) -> Callable[[], bytes]:
    """What a supervisor serves: its children's metrics from `directory`, merged.

    Counters and histograms are summed per label set across every child that ever ran
    (a restarted child's slot goes on counting); gauges across the live ones.
    """
    from prometheus_client import multiprocess

    def exposition() -> bytes:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    return exposition


def child_exited(directory: str, pid: int) -> None:
    """Forget a dead child's live gauges (its counters stay, summed into its slot)."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, path=directory)  # type: ignore[no-untyped-call]
    except OSError as exc:
        log.warning("metrics_cleanup_failed", pid=pid, error=repr(exc))
