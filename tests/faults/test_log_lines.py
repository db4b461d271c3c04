"""Buffered log lines: the worker writes its per-message lines in batches, and none is lost
when it stops on SIGTERM or restarts itself on SIGHUP.

The worker (``--log-format json``, info) handles a known number of messages; the moment the
last one is done it gets the signal, while its last lines may still wait in the buffer.
Every message must have exactly one ``message_handled`` line in its log.
"""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest

from leveret.services import RabbitBroker
from tests.faults.helpers import Spawn, done_numbers
from tests.sample_actors import Job
from tests.support import WorkerProcess, wait_until

pytestmark = [pytest.mark.fault]

JOBS = 400


def _handled(worker: WorkerProcess) -> Counter[str]:
    lines: Counter[str] = Counter()
    for line in worker.log().splitlines():
        if '"message_handled"' in line:
            lines[json.loads(line)["message_id"]] += 1
    return lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_no_log_line_is_lost_when_the_worker_stops_or_restarts(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str, signum: signal.Signals
) -> None:
    worker = spawn(args=["--threads", "4", "--queues", "jobs"])
    worker.wait_consuming()
    ids = set(rabbit_broker.publish_many(Job(n=n) for n in range(JOBS)))
    wait_until(lambda: done_numbers(record) == set(range(JOBS)), 30, "every job done")
    worker.signal(signum)
    if signum == signal.SIGTERM:
        assert worker.wait(30) == 0
    else:  # the same process executes itself again and consumes: its lines were written
        wait_until(lambda: worker.log().count('"worker_consuming"') == 2, 30, "the restart")
    handled = _handled(worker)
    assert set(handled) == ids, f"{len(ids - set(handled))} messages have no line"
    assert set(handled.values()) == {1}
