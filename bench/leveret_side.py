"""The Leveret side of the benchmark: the public API only (Broker, worker, actors)."""

from __future__ import annotations

import os
import time
from typing import Any

from bench.common import PAYLOAD, Clock, Settings, pace, percentile, wait_until
from leveret.actors import Actor, handler
from leveret.schemas import Message
from leveret.services import RabbitBroker
from leveret.services.observability import tracing
from leveret.services.observability.metrics import Metrics


class Ping(Message, topic="bench.ping"):
    """The benchmark's message: a sequence number and when it was published."""

    seq: int
    sent_at: float
    payload: str


# Latency samples (seconds) while a latency run records them, else None. list.append is
# atomic, so handler threads may append without a lock.
latencies: list[float] | None = None


def _record(msg: Ping) -> None:
    if latencies is not None:
        latencies.append(time.time() - msg.sent_at)


class NoopQuorum(Actor, queue="noop", queue_type="quorum"):
    """A no-op actor on a quorum queue (Leveret's default queue type)."""

    @handler
    def ping(self, msg: Ping) -> None:
        _record(msg)


class NoopClassic(Actor, queue="noop", queue_type="classic"):
    """The same no-op actor on a classic queue."""

    @handler
    def ping(self, msg: Ping) -> None:
        _record(msg)


ACTORS: dict[str, type[Actor]] = {"quorum": NoopQuorum, "classic": NoopClassic}


def _ping(seq: int) -> Ping:
    return Ping(seq=seq, sent_at=time.time(), payload=PAYLOAD)


class LeveretBench:
    """Runs each scenario on Leveret, in the namespace ``{namespace}.{queue_type}``."""

    def __init__(self, settings: Settings, queue_type: str) -> None:
        self.settings = settings
        self.actor = ACTORS[queue_type]
        self.broker = RabbitBroker(settings.url, namespace=f"{settings.namespace}.{queue_type}")
        self.queue = f"{self.broker.namespace}.{self.actor.queue}"
        self._workers: list[Any] = []
        self.broker.declare(self.actor)

    def purge(self) -> None:
        """Empty the actor's queue."""
        with self.broker.admin() as channel:
            channel.queue_purge(self.queue)

    def publish_single(self) -> Clock:
        """`broker.send`, one message at a time, each waiting for its confirm."""
        clock = Clock(self.settings.single)
        clock.start()
        for seq in range(clock.count):
            self.broker.send(self.actor, _ping(seq))
        clock.stop()
        self.purge()
        return clock

    def publish_many(self) -> Clock:
        """`broker.publish_many` of every message at once (pipelined confirms)."""
        clock = Clock(self.settings.many)
        messages = [_ping(seq) for seq in range(clock.count)]
        clock.start()
        self.broker.publish_many(messages)
        clock.stop()
        self.purge()
        return clock

    def fill(self, count: int) -> None:
        """Put `count` messages in the actor's queue (not timed)."""
        for start in range(0, count, 5000):
            self.broker.publish_many(_ping(seq) for seq in range(start, min(count, start + 5000)))
        wait_until(lambda: self.broker.message_count(self.queue) >= count, 30, "the queue fill")

    def drain(self, *, metrics: bool = False, tracing_on: bool = False) -> Clock:
        """A worker started on `drain` waiting messages, until all are handled.

        Args:
            metrics: With the worker's Prometheus metrics (as ``--health-port`` turns on).
            tracing_on: With OpenTelemetry's API enabled and no tracer provider (installed
                but unused); the other runs have tracing off.
        """
        clock = Clock(self.settings.drain)
        count = clock.count
        self.fill(count)
        # With metrics, a broker of its own whose middleware they are (on the same queues).
        broker = self.broker
        prometheus = None
        if metrics:
            prometheus = Metrics({self.actor.queue: self.actor.topics()})
            broker = RabbitBroker(
                self.settings.url, namespace=self.broker.namespace, middleware=[prometheus]
            )
        if tracing_on:
            os.environ[tracing.TRACING_ENV] = "on"
            tracing.reset()
        try:
            worker = broker.worker(
                [self.actor],
                threads=self.settings.threads,
                prefetch=self.settings.leveret_prefetch_or_default(),
            )
        finally:
            os.environ[tracing.TRACING_ENV] = "off"
            tracing.reset()
        self._workers.append(worker)
        clock.start()
        worker.start()
        wait_until(lambda: worker.stats.handled >= count, 120, "the drain")
        clock.stop()
        self._stop(worker)
        if prometheus is not None:
            broker.close()
        return clock

    def drain_metrics(self) -> Clock:
        """`drain` with the worker's metrics on."""
        return self.drain(metrics=True)

    def drain_tracing(self) -> Clock:
        """`drain` with OpenTelemetry installed and enabled but no tracer provider set."""
        return self.drain(tracing_on=True)

    def latency(self) -> tuple[float, float]:
        """p50 and p99 (ms) of receive time minus publish time at a fixed publish rate."""
        global latencies
        count = self.settings.latency
        worker = self.broker.worker(
            [self.actor],
            threads=self.settings.threads,
            prefetch=self.settings.leveret_prefetch_or_default(),
        )
        self._workers.append(worker)
        worker.start()
        wait_until(worker.consuming.is_set, 30, "the worker to consume")
        latencies = []
        try:
            for seq in pace(self.settings.rate, count):
                self.broker.send(self.actor, _ping(seq))
            wait_until(lambda: len(latencies or ()) >= count, 30, "the latency run")
            samples = latencies
        finally:
            latencies = None
            self._stop(worker)
        return percentile(samples, 0.50) * 1000, percentile(samples, 0.99) * 1000

    def _stop(self, worker: Any) -> None:
        worker.shutdown(10)
        self._workers.remove(worker)

    def close(self) -> None:
        """Stop any worker still running, delete every queue and exchange, disconnect."""
        for worker in list(self._workers):
            self._stop(worker)
        try:
            self.broker.delete(self.actor)
            self.broker.delete_namespace_exchanges()
        finally:
            self.broker.close()
