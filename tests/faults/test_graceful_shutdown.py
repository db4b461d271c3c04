"""SIGTERM: the handler in flight finishes and is acked once; prefetched messages go back."""

from __future__ import annotations

import signal

import pytest

from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.faults.helpers import Spawn, done_numbers, events
from tests.sample_actors import Job, Jobs
from tests.support import wait_until

pytestmark = [pytest.mark.fault]


def test_sigterm_lets_the_handler_in_flight_finish_and_acks_it_once(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str
) -> None:
    """SIGTERM mid-handler: it completes, the worker exits 0, the message is never redelivered."""
    rabbit_broker.declare(Jobs)
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    worker = spawn(args=["--threads", "2"])
    worker.wait_consuming()
    rabbit_broker.send(Jobs, Job(n=1, sleep_s=3))
    wait_until(lambda: events(record, "start", 1), 15, "job 1 to start")

    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.log()
    assert [line[2] for line in events(record, "done", 1)] == [worker.pid]
    assert rabbit_broker.message_count(queue) == 0, "the finished message was not acked"

    # Another worker finds nothing of job 1: its next job (2) is the only one it runs.
    after = spawn(args=["--threads", "2"])
    after.wait_consuming()
    rabbit_broker.send(Jobs, Job(n=2))
    wait_until(lambda: events(record, "done", 2), 15, "job 2 to be done")
    after.signal(signal.SIGTERM)
    assert after.wait(20) == 0, after.log()
    assert len(events(record, "start", 1)) == 1, f"job 1 ran again: {events(record, 'start')}"
    assert rabbit_broker.message_count(queue) == 0


def test_sigterm_requeues_prefetched_messages_not_started(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str
) -> None:
    """Messages prefetched but not started at SIGTERM are requeued and run by the next worker."""
    rabbit_broker.declare(Jobs)
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    sent = list(range(1, 6))
    for n in sent:
        rabbit_broker.send(Jobs, Job(n=n, sleep_s=1.0))
    worker = spawn(args=["--threads", "1", "--prefetch", "3"])
    worker.wait_consuming()
    wait_until(lambda: events(record, "start"), 15, "a job to start")

    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.log()
    assert "worker_draining" in worker.log()
    first_done = done_numbers(record)
    assert 1 <= len(first_done) < len(sent), "SIGTERM should stop the worker after its job"
    wait_until(
        lambda: rabbit_broker.message_count(queue) == len(sent) - len(first_done),
        10,
        "the messages not started to be back in the queue",
    )

    successor = spawn(args=["--threads", "2"])
    successor.wait_consuming()
    wait_until(lambda: done_numbers(record) == set(sent), 20, "every job to be done")
    successor.signal(signal.SIGTERM)
    assert successor.wait(20) == 0, successor.log()
    done = [line[1] for line in events(record, "done")]
    assert sorted(done) == sent, f"each job done exactly once: {done}"


def test_sighup_drains_one_process_then_runs_the_new_code_in_the_same_process(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str
) -> None:
    """SIGHUP to a single-process worker: the handler in flight finishes and is acked once,
    the prefetched message is given back, and the same pid comes back consuming."""
    rabbit_broker.declare(Jobs)
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    worker = spawn(args=["--threads", "1", "--prefetch", "2"])
    worker.wait_consuming()
    rabbit_broker.send(Jobs, Job(n=1, sleep_s=2))
    rabbit_broker.send(Jobs, Job(n=2))
    wait_until(lambda: events(record, "start", 1), 15, "job 1 to start")

    worker.signal(signal.SIGHUP)
    wait_until(lambda: worker.log().count("worker_consuming") == 2, 30, "the restart")
    assert worker.process.poll() is None, worker.log()
    rabbit_broker.send(Jobs, Job(n=3))
    wait_until(lambda: done_numbers(record) == {1, 2, 3}, 20, "every job to be done")

    assert [line[1] for line in events(record, "start")] == [1, 2, 3], "none ran twice"
    assert {line[2] for line in events(record, "done")} == {worker.pid}, "same process"
    assert "worker_restarting" in worker.log()
    assert rabbit_broker.message_count(queue) == 0
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.log()
