"""A huge backlog does not grow a worker's memory: it holds only what its prefetch allows.

200,000 messages wait in one actor queue (1 million was measured once by hand with
``bench/backlog.py``; see docs/performance.md, "Backlog memory"). A ``leveret worker`` with
``--threads 2 --prefetch 4`` and a slow handler works through them for ~10 s while the
backlog stays huge; its RSS must stay flat and the broker must never have handed it more
than 4 unacknowledged messages.
"""

from __future__ import annotations

import time

import pytest

from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.faults.helpers import Spawn
from tests.sample_actors import Job, Jobs
from tests.support import rabbitmqctl_list, wait_until

pytestmark = [pytest.mark.fault]

BACKLOG = 200_000
BATCH = 10_000
PREFETCH = 4
SAMPLE_FOR_S = 10.0
RSS_GROWTH_LIMIT_KB = 30 * 1024


def rss_kb(pid: int) -> int:
    """The resident set size of process `pid` (VmRSS), in kB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def queue_counts(queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of `queue`, as RabbitMQ reports them."""
    for fields in rabbitmqctl_list("queues", "name", "messages_ready", "messages_unacknowledged"):
        if fields[0] == queue:
            return int(fields[1]), int(fields[2])
    raise AssertionError(f"queue {queue} not listed by rabbitmqctl")


def test_backlog_does_not_grow_worker_memory_beyond_its_prefetch(
    rabbit_broker: RabbitBroker, spawn: Spawn
) -> None:
    """RSS stays within start + 30 MB and unacked <= prefetch while 200,000 messages wait."""
    rabbit_broker.declare(Jobs)
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    started = time.monotonic()
    for first in range(0, BACKLOG, BATCH):
        rabbit_broker.publish_many(Job(n=n, sleep_s=0.01) for n in range(first, first + BATCH))
    published_s = time.monotonic() - started
    assert rabbit_broker.message_count(queue) >= BACKLOG  # more if a publish was resent

    worker = spawn(
        args=["--threads", "2", "--prefetch", str(PREFETCH), "--queues", Jobs.queue],
        env={"LEVERET_TEST_RECORD": ""},  # no record file: 200,000 lines are not the point
    )
    worker.wait_consuming()
    wait_until(lambda: worker.log().count("message_handled") >= 20, 20, "handling to start")
    start_kb = rss_kb(worker.pid)
    samples: list[tuple[float, int, int, int]] = []  # (s, rss kB, ready, unacked)
    begin = time.monotonic()
    while time.monotonic() - begin < SAMPLE_FOR_S:
        ready, unacked = queue_counts(queue)
        samples.append((time.monotonic() - begin, rss_kb(worker.pid), ready, unacked))
        time.sleep(0.3)
    handled = worker.log().count("message_handled")
    assert worker.process.poll() is None, worker.log()[-2000:]

    peak_kb = max(rss for _t, rss, _r, _u in samples)
    max_unacked = max(unacked for _t, _rss, _r, unacked in samples)
    print(
        f"\nbacklog {BACKLOG:,} published in {published_s:.1f}s; {handled} handled in "
        f"~{SAMPLE_FOR_S:.0f}s; RSS start {start_kb / 1024:.1f} MB, peak {peak_kb / 1024:.1f} "
        f"MB over {len(samples)} samples; unacked max {max_unacked} (prefetch {PREFETCH}); "
        f"ready at the end {samples[-1][2]:,}"
    )
    assert peak_kb <= start_kb + RSS_GROWTH_LIMIT_KB, samples
    assert max_unacked <= PREFETCH, samples
    assert rabbit_broker.message_count(queue) > BACKLOG - 10_000, "the backlog stayed huge"
    assert handled >= 100, "the worker kept handling while the backlog waited"
