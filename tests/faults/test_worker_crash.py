"""A worker process killed with SIGKILL mid-message loses nothing: RabbitMQ redelivers."""

from __future__ import annotations

import signal

import pytest

from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.faults.helpers import Spawn, done_numbers, events
from tests.sample_actors import Job, Jobs
from tests.support import wait_until

pytestmark = [pytest.mark.fault]


def test_sigkill_mid_handler_redelivers_to_a_new_worker(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str
) -> None:
    """A message whose worker is SIGKILLed mid-handler is handled again by a new worker."""
    rabbit_broker.declare(Jobs)
    first = spawn(args=["--threads", "2"])
    first.wait_consuming()
    sent = list(range(1, 7))
    for n in sent:
        rabbit_broker.send(Jobs, Job(n=n, sleep_s=2.0 if n == 1 else 0.2))
    wait_until(lambda: events(record, "start", 1), 15, "job 1 to start")

    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert not events(record, "done", 1), "job 1 cannot have finished: its worker was killed"

    second = spawn(args=["--threads", "2"])
    second.wait_consuming()
    wait_until(lambda: done_numbers(record) == set(sent), 20, "every job to be done")

    starts = events(record, "start", 1)
    assert [pid for _e, _n, pid, _id in starts] == [first.pid, second.pid], starts
    assert starts[0][3] == starts[1][3], "the redelivered message keeps its message_id"
    assert events(record, "done", 1)[0][2] == second.pid
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    wait_until(lambda: rabbit_broker.message_count(queue) == 0, 10, "the queue to be empty")
