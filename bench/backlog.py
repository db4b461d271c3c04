"""Backlog memory: does a worker's memory stay flat while a huge backlog waits?

```console
$ .venv/bin/python -m bench.backlog --messages 1000000 --seconds 30
```

Publishes `--messages` small jobs into one actor queue (`tests.sample_actors.Jobs`, in the
namespace ``bench-backlog-<pid>``), starts ``leveret worker`` with ``--threads 2 --prefetch 4``
and a handler that sleeps 10 ms, and samples the worker's RSS (``/proc/<pid>/status``) and the
queue's unacknowledged count (``rabbitmqctl``) for `--seconds`. Everything it declared is
deleted at the end. `tests/faults/test_backlog_memory.py` runs the same check at 200,000.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import argument_parser
from leveret.services import RabbitBroker
from leveret.services.observability.logs import configure_logging
from leveret.services.topology import naming
from tests.faults.test_backlog_memory import queue_counts, rss_kb
from tests.sample_actors import Crasher, Job, Jobs

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    """Run the measurement and print one line per sample, then a summary."""
    parser = argument_parser(None, __doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--prefetch", type=int, default=4)
    args = parser.parse_args()
    configure_logging("warning")
    namespace = f"bench-backlog-{os.getpid()}"
    broker = RabbitBroker(args.url, namespace=namespace)
    worker: subprocess.Popen[bytes] | None = None
    try:
        broker.declare(Jobs, Crasher)
        queue = naming.queue_name(namespace, Jobs.queue)
        started = time.monotonic()
        for first in range(0, args.messages, 10_000):
            last = min(args.messages, first + 10_000)
            broker.publish_many(Job(n=n, sleep_s=0.01) for n in range(first, last))
        publish_s = time.monotonic() - started
        print(f"published {args.messages:,} in {publish_s:.1f}s", flush=True)
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "leveret.services.cli", "worker", "tests.sample_actors"),
                *("--broker-url", args.url, "--namespace", namespace, "--queues", Jobs.queue),
                *("--threads", "2", "--prefetch", str(args.prefetch), "--log-level", "warning"),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "LEVERET_TEST_RECORD": ""},
        )
        time.sleep(3)  # start-up: imports, connection, topology
        samples = []
        begin = time.monotonic()
        while time.monotonic() - begin < args.seconds:
            ready, unacked = queue_counts(queue)
            sample = (time.monotonic() - begin, rss_kb(worker.pid), ready, unacked)
            samples.append(sample)
            print(
                f"t={sample[0]:5.1f}s rss={sample[1] / 1024:6.1f} MB ready={ready:,} "
                f"unacked={unacked}",
                flush=True,
            )
            time.sleep(1)
        rss = [s[1] for s in samples]
        print(
            f"backlog {args.messages:,}: RSS first {rss[0] / 1024:.1f} MB, "
            f"max {max(rss) / 1024:.1f} MB; unacked max {max(s[3] for s in samples)} "
            f"(prefetch {args.prefetch}); "
            f"ready at the end {samples[-1][2]:,}"
        )
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        broker.delete(Jobs, Crasher)
        broker.delete_namespace_exchanges()
        broker.close()


if __name__ == "__main__":
    main()
