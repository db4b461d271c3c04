"""Run the peers' drains: each peer's own worker process on its own fresh queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika

from bench.common import PAYLOAD

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Peer:
    """One peer: its worker command, how to fill its queue, which queues it uses."""

    name: str
    label: str
    command: list[str]
    fill: Callable[[str, str, int], None]
    queues: Callable[[str], list[str]]


def _dramatiq_fill(url: str, queue: str, count: int) -> None:
    os.environ.update(BENCH_PEER_URL=url, BENCH_PEER_QUEUE=queue)
    from bench.peers import dramatiq_app

    for seq in range(count):
        dramatiq_app.ping.send(seq, time.time(), PAYLOAD)
    dramatiq_app.broker.close()


def _celery_fill(url: str, queue: str, count: int) -> None:
    os.environ.update(BENCH_PEER_URL=url, BENCH_PEER_QUEUE=queue)
    from bench.peers import celery_app

    with celery_app.app.producer_or_acquire() as producer:
        for seq in range(count):
            celery_app.ping.apply_async((seq, time.time(), PAYLOAD), producer=producer)


def _faststream_fill(url: str, queue: str, count: int) -> None:
    import json

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.confirm_delivery()
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        for seq in range(count):
            body = json.dumps({"seq": seq, "sent_at": time.time(), "payload": PAYLOAD})
            channel.basic_publish("", queue, body.encode(), properties)
    finally:
        connection.close()


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
    queue = f"{namespace.replace('-', '_')}_{peer.name}"
    record = Path(tempfile.mkstemp(prefix=f"bench-{peer.name}-")[1])
    log = record.with_suffix(".log")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_PEER_URL": url,
        "BENCH_PEER_QUEUE": queue,
        "BENCH_PEER_COUNT": str(count),
        "BENCH_PEER_RECORD": str(record),
        **(extra_env or {}),
    }
    process = None
    before = _objects()
    try:
        _run_fill(peer, url, queue, count)
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, *peer.command], cwd=ROOT, env=env, stdout=output, stderr=output
            )
        deadline = time.monotonic() + 180
        while "last" not in record.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{peer.name} did not drain: see {log}\n{log.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        times = dict(line.split() for line in record.read_text().splitlines())
        return (count - 1) / (float(times["last"]) - float(times["first"]))
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        _delete(url, peer.queues(queue), _objects(), before)
        record.unlink(missing_ok=True)
        log.unlink(missing_ok=True)


def _run_fill(peer: Peer, url: str, queue: str, count: int) -> None:
    """Fill in a child process: the peers' modules read their settings at import."""
    code = (
        "import sys; from bench.peers.run import PEERS; "
        "peer = next(p for p in PEERS if p.name == sys.argv[1]); "
        "peer.fill(sys.argv[2], sys.argv[3], int(sys.argv[4]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, peer.name, url, queue, str(count)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
        timeout=300,
    )


def _objects() -> dict[str, set[str]]:
    """The broker's queues and exchanges now (rabbitmqctl), to delete what a peer added."""
    found: dict[str, set[str]] = {}
    for kind in ("queues", "exchanges"):
        out = subprocess.run(
            ["rabbitmqctl", "-q", f"list_{kind}", "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        found[kind] = {line for line in out.split() if line and line != "name"}
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
