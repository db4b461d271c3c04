"""Drain throughput by worker processes: ``python -m bench.scaling [--processes 1,2,4]``.

For each process count P, the same queue is filled with N waiting messages (not timed) and
drained twice: by ``leveret worker bench.sink --processes P`` (the supervisor and P
children), and by P raw-pika consumer processes (`bench.sink.raw_consume`: prefetch,
``json.loads``, one ack each). Both sides append one line per message to the same kind of
record file, so both pay the same cost. The rate is taken between the moments 10% and 90%
of the messages were handled: the steady state, without the processes' start-up (which
differs: an interpreter per child either way, plus Leveret's imports) or the tail.

Everything lives in the namespace ``bench-<pid>`` and is deleted at the end.
Results: a table on stdout and bench/results/scaling-latest.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import PAYLOAD, argument_parser
from bench.run import _best_effort, _rabbitmq_version, _raise_interrupt, remove_sink_run
from bench.sink import RECORD_DIR_ENV, Sink, Tick, raw_consume
from leveret.services import RabbitBroker, config
from leveret.services.observability.logs import configure_logging
from leveret.services.topology import naming

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "scaling-latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser("python -m bench.scaling", __doc__)
    parser.add_argument("--messages", type=int, default=60_000, help="messages per drain")
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts")
    parser.add_argument("--threads", type=int, default=8, help="Leveret handler threads")
    parser.add_argument("--prefetch", type=int, default=200, help="prefetch per process")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def steady_rate(times: list[float]) -> float:
    """Messages per second between the 10% and the 90% handled marks."""
    ordered = sorted(times)
    low, high = len(ordered) // 10, len(ordered) * 9 // 10
    return (high - low) / (ordered[high] - ordered[low])


def read_times(directory: Path) -> list[float]:
    """The handled times of every record file in `directory`."""
    times = []
    for path in directory.iterdir():
        for line in path.read_bytes().splitlines():
            times.append(float(line.split()[1]))
    return times


class Scaling:
    """Fills the queue and drains it with each side at each process count."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.namespace = f"bench-{os.getpid()}"
        self.broker = RabbitBroker(args.url, namespace=self.namespace)
        self.queue = naming.queue_name(self.namespace, Sink.queue)
        self.work_dir = Path(tempfile.mkdtemp(prefix="leveret-scaling-"))
        self._stop: Callable[[], None] | None = None
        self.broker.declare(Sink)

    def fill(self) -> None:
        count = self.args.messages
        for start in range(0, count, 5000):
            end = min(count, start + 5000)
            self.broker.publish_many(Tick(seq=seq, payload=PAYLOAD) for seq in range(start, end))
        deadline = time.monotonic() + 60
        while self.broker.message_count(self.queue) < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the queue did not fill")
            time.sleep(0.05)

    def drain(self, side: str, processes: int) -> float:
        """Fill, drain with `side` at `processes`, stop it; the steady rate in msg/s."""
        self.fill()
        records = self.work_dir / f"{side}-{processes}"
        records.mkdir()
        if side == "leveret":
            self._stop = self._start_leveret(processes, records)
        else:
            self._stop = self._start_raw(processes, records)
        deadline = time.monotonic() + 300
        try:
            while sum(1 for _ in _lines(records)) < self.args.messages:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{side} with {processes} processes did not drain")
                time.sleep(0.2)
        finally:
            self._stop()
            self._stop = None
        return steady_rate(read_times(records))

    def _start_leveret(self, processes: int, records: Path) -> Callable[[], None]:
        command = [sys.executable, "-m", "leveret.services.cli", "worker", "bench.sink"]
        command += ["--processes", str(processes), "--threads", str(self.args.threads)]
        command += ["--prefetch", str(self.args.prefetch), "--namespace", self.namespace]
        command += ["--log-level", "warning"]
        env = {
            **os.environ,
            RECORD_DIR_ENV: str(records),
            config.BROKER_URL_ENV: self.args.url,
            "PYTHONPATH": str(ROOT),
        }
        supervisor = subprocess.Popen(command, cwd=ROOT, env=env)

        def stop() -> None:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(60)

        return stop

    def _start_raw(self, processes: int, records: Path) -> Callable[[], None]:
        context = multiprocessing.get_context("spawn")
        consumers = [
            context.Process(
                target=raw_consume,
                args=(self.args.url, self.queue, self.args.prefetch, str(records)),
                daemon=True,
            )
            for _ in range(processes)
        ]
        for consumer in consumers:
            consumer.start()

        def stop() -> None:
            for consumer in consumers:
                consumer.terminate()  # SIGTERM to that pid only
            for consumer in consumers:
                consumer.join(30)

        return stop

    def close(self) -> None:
        if self._stop is not None:
            _best_effort(self._stop)
        remove_sink_run(self.broker, self.args.url, self.work_dir)


def _lines(directory: Path) -> Any:
    for path in directory.iterdir():
        yield from path.read_bytes().splitlines()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("warning")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    counts = [int(n) for n in args.processes.split(",")]
    scaling = Scaling(args)
    print(f"Drain scaling: namespace {scaling.namespace}, {args.messages} messages per drain")
    results: dict[str, dict[str, float]] = {}
    try:
        for processes in counts:
            for side in ("leveret", "raw"):
                rate = scaling.drain(side, processes)
                results.setdefault(str(processes), {})[side] = rate
                print(f"  {processes} process(es) {side:<8} {rate:>9.0f} msg/s", flush=True)
    except KeyboardInterrupt:
        print("interrupted: the queues and exchanges declared were deleted", file=sys.stderr)
        return 130
    finally:
        scaling.close()
    print(f"{'processes':>9} {'Leveret':>10} {'raw pika':>10} {'Leveret/raw':>12}")
    for label, sides in results.items():
        ratio = sides["leveret"] / sides["raw"]
        print(f"{label:>9} {sides['leveret']:>10.0f} {sides['raw']:>10.0f} {ratio:>11.0%}")
    document: dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "rabbitmq": _rabbitmq_version()},
        "settings": {k: str(v) for k, v in vars(args).items() if k != "url"},
        "drain_msg_s": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
