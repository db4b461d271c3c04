"""The I/O-bound scenarios: handlers that wait 10 ms (an HTTP call, a database query).

- Drain: Leveret with sync handlers on 8, 64 and 200 threads, Leveret with ``async def``
  handlers at concurrency 100, 200 (the default) and 500, and the peers (`bench.peers.run.io_peers`)
  on the same broker in the same run. Each drains ``--io-drain`` messages from a quorum queue.
- Memory per message in flight: a worker process holding ``--io-in-flight`` messages at once
  (handlers waiting 30 s), its resident memory before the worker starts against while they
  all wait, divided by their number; an async task against a thread.

``python -m bench --io-bound`` runs them; ``python -m bench.iobound memory async 1000 URL``
is the memory child (one process per measure, so that each starts clean).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import Clock, Settings, wait_until
from bench.leveret_side import Ping, _ping
from leveret.actors import Actor, handler
from leveret.services import RabbitBroker

IO_S = 0.010
"""How long each handler waits."""
MEMORY_WAIT_S = 30.0
_wait_s = IO_S  # MEMORY_WAIT_S in the memory child


class SleepingSync(Actor, queue="io_sync"):
    """Waits 10 ms in its thread (a blocking client)."""

    @handler
    def ping(self, msg: Ping) -> None:
        time.sleep(_wait_s)


class SleepingAsync(Actor, queue="io_async"):
    """Waits 10 ms on the event loop (an async client)."""

    @handler
    async def ping(self, msg: Ping) -> None:
        await asyncio.sleep(_wait_s)


@dataclass(frozen=True)
class Setup:
    """One Leveret configuration of the I/O-bound drain."""

    key: str
    label: str
    actor: type[Actor]
    threads: int = 8
    concurrency: int = 100


LEVERET_SETUPS = (
    Setup("leveret_threads_8", "Leveret, 8 threads (default), sync handler", SleepingSync, 8),
    Setup("leveret_threads_64", "Leveret, 64 threads, sync handler", SleepingSync, 64),
    Setup("leveret_threads_200", "Leveret, 200 threads, sync handler", SleepingSync, 200),
    Setup(
        "leveret_async_100", "Leveret, async def, concurrency 100", SleepingAsync, concurrency=100
    ),
    Setup(
        "leveret_async_200",
        "Leveret, async def, concurrency 200 (default)",
        SleepingAsync,
        concurrency=200,
    ),
    Setup(
        "leveret_async_500", "Leveret, async def, concurrency 500", SleepingAsync, concurrency=500
    ),
)


def leveret_drain(settings: Settings, setup: Setup, count: int) -> float:
    """One I/O-bound drain of `count` messages on Leveret (adaptive prefetch): msg/s."""
    broker = RabbitBroker(settings.url, namespace=f"{settings.namespace}.io")
    try:
        broker.declare(setup.actor)
        queue = f"{broker.namespace}.{setup.actor.queue}"
        for start in range(0, count, 5000):
            broker.publish_many(_ping(seq) for seq in range(start, min(count, start + 5000)))
        wait_until(lambda: broker.message_count(queue) >= count, 30, "the queue fill")
        worker = broker.worker([setup.actor], threads=setup.threads, concurrency=setup.concurrency)
        clock = Clock(count)
        clock.start()
        worker.start()
        try:
            wait_until(lambda: worker.stats.handled >= count, 300, "the I/O-bound drain")
            clock.stop()
        finally:
            worker.shutdown(30)
        return clock.rate
    finally:
        try:
            broker.delete(setup.actor)
            broker.delete_namespace_exchanges()
        finally:
            broker.close()


def run_io_bound(settings: Settings, repeat: int, count: int, peers: bool) -> dict[str, Any]:
    """Every I/O-bound drain `repeat` times, taking turns; and the memory per message."""
    drains: dict[str, list[float]] = {setup.key: [] for setup in LEVERET_SETUPS}
    labels = {setup.key: setup.label for setup in LEVERET_SETUPS}
    peer_setups: list[tuple[str, Any, dict[str, str]]] = []
    if peers:
        from bench.peers.run import io_peers

        for peer, env in io_peers():
            key = f"{peer.name}_{len(peer_setups)}"
            peer_setups.append((key, peer, env))
            drains[key] = []
            labels[key] = peer.label
    for attempt in range(1, repeat + 1):
        for setup in LEVERET_SETUPS:
            rate = leveret_drain(settings, setup, count)
            drains[setup.key].append(rate)
            print(f"  io-bound run {attempt} {setup.label:<52} {rate:>8.0f} msg/s")
        for key, peer, env in peer_setups:
            from bench.peers.run import drain

            rate = drain(
                peer,
                settings.url,
                settings.namespace,
                count,
                {"BENCH_PEER_SLEEP_MS": str(IO_S * 1000), **env},
            )
            drains[key].append(rate)
            print(f"  io-bound run {attempt} {peer.label:<52} {rate:>8.0f} msg/s")
    memory = {mode: memory_per_message(settings.url, mode) for mode in ("async", "threads")}
    for mode, figures in memory.items():
        print(f"  in-flight memory, {mode:<7} {figures['per_message_kib']:.1f} KiB per message")
    return {"drain": drains, "labels": labels, "memory": memory, "count": count}


def print_io_bound(results: dict[str, Any]) -> None:
    """The I/O-bound table: best of the runs, against the best thread count."""
    io = results.get("io_bound")
    if not io:
        return
    drains: dict[str, list[float]] = io["drain"]
    best_threads = max(
        max(drains[key]) for key in drains if key.startswith("leveret_threads") and drains[key]
    )
    print()
    title = "I/O-bound drain, handler waits 10 ms (best of the runs)"
    print(f"{title:<64} {'msg/s':>8} {'vs best threads':>16}")
    for key, samples in drains.items():
        if samples:
            rate = max(samples)
            print(f"{io['labels'][key][:64]:<64} {rate:>8.0f} {rate / best_threads:>16.0%}")
    for mode, figures in io["memory"].items():
        print(
            f"memory per message in flight, {mode}: {figures['per_message_kib']:.1f} KiB "
            f"({figures['in_flight']} in flight, RSS +{figures['rss_delta_kib']:.0f} KiB)"
        )


def memory_per_message(url: str, mode: str, in_flight: int = 1000) -> dict[str, float]:
    """Resident memory a worker adds per message in flight (`mode`: async or threads)."""
    output = subprocess.run(
        [sys.executable, "-m", "bench.iobound", "memory", mode, str(in_flight), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    figures: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return figures


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _memory_child(mode: str, in_flight: int, url: str) -> None:
    """Hold `in_flight` messages in handlers at once; print the RSS figures as JSON."""
    global _wait_s
    _wait_s = MEMORY_WAIT_S
    actor: type[Actor] = SleepingAsync if mode == "async" else SleepingSync
    broker = RabbitBroker(url, namespace=f"bench-memory-{os.getpid()}")
    try:
        broker.declare(actor)
        queue = f"{broker.namespace}.{actor.queue}"
        broker.publish_many(_ping(seq) for seq in range(in_flight))
        wait_until(lambda: broker.message_count(queue) >= in_flight, 30, "the queue fill")
        worker = broker.worker(
            [actor],
            threads=in_flight if mode == "threads" else 1,
            concurrency=in_flight,
            prefetch=in_flight,
            shutdown_timeout_s=0.5,
        )
        before = _rss_kib()
        worker.start()
        try:
            wait_until(lambda: worker.in_flight >= in_flight, 60, "every handler to run")
            time.sleep(0.5)
            during = _rss_kib()
        finally:
            worker.shutdown(5)
        delta = during - before
        print(
            json.dumps(
                {
                    "in_flight": in_flight,
                    "rss_before_kib": before,
                    "rss_delta_kib": delta,
                    "per_message_kib": delta / in_flight,
                }
            )
        )
    finally:
        try:
            broker.delete(actor)
            broker.delete_namespace_exchanges()
        finally:
            broker.close()


if __name__ == "__main__":
    if sys.argv[1:2] != ["memory"] or len(sys.argv) != 5:
        sys.exit("usage: python -m bench.iobound memory async|threads IN_FLIGHT URL")
    _memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
