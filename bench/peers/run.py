"""Run the peers' drains: each peer's own worker process on its own fresh queue."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika

from bench.common import PAYLOAD, pace, percentile, rabbitmqctl_names

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Peer:
    """One peer: its worker command, how to fill its queue, which queues it uses."""

    name: str
    label: str
    command: list[str]
    fill: Callable[[str, str, int], None]
    queues: Callable[[str], list[str]]


def _sequence(count: int) -> Iterator[int]:
    """0…count-1, paced at ``BENCH_PEER_RATE`` msg/s when set (the latency run)."""
    rate = float(os.environ.get("BENCH_PEER_RATE", "0"))
    return pace(rate, count) if rate else iter(range(count))


def _dramatiq_fill(url: str, queue: str, count: int) -> None:
    os.environ.update(BENCH_PEER_URL=url, BENCH_PEER_QUEUE=queue)
    from bench.peers import dramatiq_app

    for seq in _sequence(count):
        dramatiq_app.ping.send(seq, time.time(), PAYLOAD)
    dramatiq_app.broker.close()


def _celery_fill(url: str, queue: str, count: int) -> None:
    os.environ.update(BENCH_PEER_URL=url, BENCH_PEER_QUEUE=queue)
    from bench.peers import celery_app

    with celery_app.app.producer_or_acquire() as producer:
        for seq in _sequence(count):
            celery_app.ping.apply_async((seq, time.time(), PAYLOAD), producer=producer)


def _faststream_fill(url: str, queue: str, count: int) -> None:
    """FastStream's own client (publisher confirms on, its default), one await each."""
    import asyncio

    from faststream.rabbit import QueueType, RabbitBroker, RabbitQueue

    target = RabbitQueue(queue, durable=True, queue_type=QueueType.QUORUM)

    async def publish() -> None:
        async with RabbitBroker(url) as broker:
            await broker.declare_queue(target)
            for seq in _sequence(count):
                body = {"seq": seq, "sent_at": time.time(), "payload": PAYLOAD}
                await broker.publish(body, queue=target)

    asyncio.run(publish())


PEERS = (
    Peer(
        "dramatiq",
        "Dramatiq, 1 process x 8 threads (its default prefetch), classic queue",
        ["-m", "dramatiq", "bench.peers.dramatiq_app", "-p", "1", "-t", "8"],
        _dramatiq_fill,
        lambda queue: [queue, f"{queue}.DQ", f"{queue}.XQ"],
    ),
    Peer(
        "celery",
        "Celery, threads pool c=8, acks late, quorum queue",
        [
            *("-m", "celery", "-A", "bench.peers.celery_app", "worker", "-P", "threads"),
            *("-c", "8", "--without-gossip", "--without-mingle", "--without-heartbeat"),
            *("--loglevel", "WARNING"),
        ],
        _celery_fill,
        lambda queue: [queue],
    ),
    Peer(
        "faststream",
        "FastStream (async), 1 process, quorum queue",
        ["-m", "faststream", "run", "bench.peers.faststream_app:app"],
        _faststream_fill,
        lambda queue: [queue],
    ),
)


def io_peers() -> tuple[tuple[Peer, dict[str, str]], ...]:
    """The peers of the I/O-bound drain, each with the settings that suit it best here:
    Dramatiq with 8 (its default) and 64 threads, FastStream with prefetch 100 and 500."""
    dramatiq, _celery, faststream = PEERS
    return (
        (dramatiq, {}),
        (
            Peer(
                "dramatiq",
                "Dramatiq, 1 process x 64 threads, classic queue",
                [*dramatiq.command[:-1], "64"],
                dramatiq.fill,
                dramatiq.queues,
            ),
            {},
        ),
        (faststream, {}),
        (
            Peer(
                "faststream",
                "FastStream (async), 1 process, prefetch 500, quorum queue",
                faststream.command,
                faststream.fill,
                faststream.queues,
            ),
            {"BENCH_PEER_PREFETCH": "500"},
        ),
    )


def drain(
    peer: Peer, url: str, namespace: str, count: int, extra_env: dict[str, str] | None = None
) -> float:
    """One drain of `count` messages on `peer`: messages per second.

    Args:
        extra_env: More settings for the peer's process (``BENCH_PEER_SLEEP_MS``…).
    """
    queue = _queue(peer, namespace)
    before = _objects()
    try:
        _run_fill(peer, url, queue, count)
        with _worker(peer, url, queue, count, extra_env) as record:
            _wait_last(record)
            times = dict(line.split() for line in record.path.read_text().splitlines())
            return (count - 1) / (float(times["last"]) - float(times["first"]))
    finally:
        _delete(url, peer.queues(queue), _objects(), before)


def publish(peer: Peer, url: str, namespace: str, count: int) -> float:
    """`count` messages published one at a time by the peer's own client, each waiting for
    RabbitMQ's confirm (turned on where it is optional): messages per second."""
    queue = _queue(peer, namespace)
    before = _objects()
    try:
        return count / _run_fill(peer, url, queue, count, {"BENCH_PEER_CONFIRM": "1"})
    finally:
        _delete(url, peer.queues(queue), _objects(), before)


def latency(peer: Peer, url: str, namespace: str, count: int, rate: float) -> tuple[float, float]:
    """p50 and p99 (ms) from publish to handler, `count` messages published at `rate`/s by
    the peer's own client to its worker, already consuming."""
    queue = _queue(peer, namespace)
    before = _objects()
    try:
        with _worker(peer, url, queue, count, {"BENCH_PEER_LATENCY": "1"}) as record:
            _wait_consumer(queue, record)
            _run_fill(peer, url, queue, count, {"BENCH_PEER_RATE": str(rate)})
            _wait_last(record)
            samples = [float(value) for value in record.latencies.read_text().split()]
        return percentile(samples, 0.50) * 1000, percentile(samples, 0.99) * 1000
    finally:
        _delete(url, peer.queues(queue), _objects(), before)


def _queue(peer: Peer, namespace: str) -> str:
    return f"{namespace.replace('-', '_')}_{peer.name}"


@dataclass
class _Record:
    """What a peer's worker writes: first/last times, latencies, its output."""

    path: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def latencies(self) -> Path:
        return Path(f"{self.path}.latencies")


@contextlib.contextmanager
def _worker(
    peer: Peer, url: str, queue: str, count: int, extra_env: dict[str, str] | None
) -> Iterator[_Record]:
    """The peer's worker process, stopped (SIGTERM, then SIGKILL) and its files removed."""
    path = Path(tempfile.mkstemp(prefix=f"bench-{peer.name}-")[1])
    log = path.with_suffix(".log")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_PEER_URL": url,
        "BENCH_PEER_QUEUE": queue,
        "BENCH_PEER_COUNT": str(count),
        "BENCH_PEER_RECORD": str(path),
        **(extra_env or {}),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, *peer.command], cwd=ROOT, env=env, stdout=output, stderr=output
        )
    record = _Record(path, process, log)
    try:
        yield record
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for leftover in (path, log, record.latencies):
            leftover.unlink(missing_ok=True)


def _wait_last(record: _Record, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while "last" not in record.path.read_text():
        _check_alive(record, deadline)
        time.sleep(0.05)


def _wait_consumer(queue: str, record: _Record, timeout_s: float = 60) -> None:
    """Until the peer's worker consumes `queue` (it declares the queue itself)."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "name", "consumers"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        rows = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)
        if rows.get(queue, "0") not in ("0", "consumers"):
            return
        _check_alive(record, deadline)
        time.sleep(0.2)


def _check_alive(record: _Record, deadline: float) -> None:
    if record.process.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(
            f"the peer's worker did not get there: see {record.log}\n"
            f"{record.log.read_text()[-2000:]}"
        )


def _run_fill(
    peer: Peer, url: str, queue: str, count: int, extra_env: dict[str, str] | None = None
) -> float:
    """Fill in a child process (the peers' modules read their settings at import); the
    seconds the filling took, timed in the child."""
    code = (
        "import sys, time; from bench.peers.run import PEERS; "
        "peer = next(p for p in PEERS if p.name == sys.argv[1]); "
        "started = time.perf_counter(); "
        "peer.fill(sys.argv[2], sys.argv[3], int(sys.argv[4])); "
        "print(time.perf_counter() - started)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, peer.name, url, queue, str(count)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})},
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return float(done.stdout.strip().splitlines()[-1])


def _objects() -> dict[str, set[str]]:
    """The broker's queues and exchanges now (rabbitmqctl), to delete what a peer added."""
    found: dict[str, set[str]] = {}
    for kind in ("queues", "exchanges"):
        found[kind] = set(rabbitmqctl_names(kind, timeout_s=60, check=False))
    return found


def _delete(
    url: str, queues: list[str], now: dict[str, set[str]], before: dict[str, set[str]]
) -> None:
    """Delete the peer's queues, and every queue and exchange it declared on its own (Celery
    declares 28 quorum queues for its delayed delivery, a pidbox exchange…)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in sorted(set(queues) | (now["queues"] - before["queues"])):
            channel.queue_delete(queue)
        for exchange in sorted(now["exchanges"] - before["exchanges"]):
            if not exchange.startswith("amq."):
                channel.exchange_delete(exchange)
    finally:
        connection.close()
