"""The default prefetch adapts: raised for fast handlers, kept low for slow ones.

`leveret worker` without ``--prefetch`` starts at twice its threads and lets the broker
hand it more while handlers are fast (up to 200), which drains at raw pika's speed; while
handlers are slow it keeps twice its threads, so a worker started later gets its share of a
backlog at once. Changing the prefetch consumes anew on the same channel: no message is
lost or handled twice by it.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from leveret.services import RabbitBroker
from leveret.services.rabbitmq._prefetch import MAX_ADAPTIVE_PREFETCH
from tests.faults.helpers import Spawn, done_numbers, events
from tests.sample_actors import Job
from tests.support import WorkerProcess, wait_until

pytestmark = [pytest.mark.fault]


def _adapted(worker: WorkerProcess) -> list[int]:
    return [
        json.loads(line)["prefetch"]
        for line in worker.log().splitlines()
        if '"worker_prefetch_adapted"' in line
    ]


def test_fast_handlers_raise_the_prefetch_and_slow_ones_lower_it(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str
) -> None:
    worker = spawn(args=["--threads", "4", "--queues", "jobs"])
    worker.wait_consuming()
    fast = 3000
    for first in range(0, fast, 500):
        rabbit_broker.publish_many(Job(n=n) for n in range(first, first + 500))
    wait_until(lambda: len(done_numbers(record)) == fast, 60, "the fast jobs")
    assert MAX_ADAPTIVE_PREFETCH in _adapted(worker)

    slow = [Job(n=fast + n, sleep_s=0.3) for n in range(16)]
    rabbit_broker.publish_many(slow)
    wait_until(lambda: len(done_numbers(record)) == fast + len(slow), 60, "the slow jobs")
    wait_until(lambda: _adapted(worker)[-1] == 8, 5, "the prefetch back to twice the threads")

    done = Counter(n for _event, n, _pid, _id in events(record, "done"))
    assert set(done) == set(range(fast + len(slow))), "no job lost"
    assert set(done.values()) == {1}, "no job handled twice"


def test_a_worker_started_later_gets_its_share_of_slow_jobs(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str
) -> None:
    jobs = 40
    first = spawn(args=["--threads", "2", "--queues", "jobs"])
    first.wait_consuming()
    rabbit_broker.publish_many(Job(n=n, sleep_s=1.0) for n in range(jobs))
    time.sleep(2.0)
    second = spawn(args=["--threads", "2", "--queues", "jobs"])
    second.wait_consuming()
    wait_until(lambda: len(done_numbers(record)) == jobs, 60, "every job")
    per_worker = Counter(pid for _event, _n, pid, _id in events(record, "done"))
    print(f"\njobs per worker: first {per_worker[first.pid]}, second {per_worker[second.pid]}")
    # Alone for 2 s the first did about 4 and holds 4 (twice its threads): of the 32 left,
    # the second takes half.
    assert per_worker[second.pid] >= 14
    assert all(prefetch <= 4 for prefetch in _adapted(first))
