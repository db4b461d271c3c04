"""Delayed messages wait inside RabbitMQ: they survive the worker's and the broker's restart."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.faults.helpers import Spawn, events
from tests.sample_actors import Job, Jobs, record_times
from tests.support import wait_until

pytestmark = [pytest.mark.fault]

DELAY_S = 5


def test_delayed_message_outlives_the_worker_that_was_running(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str
) -> None:
    """A message sent with delay=5 is delivered, no earlier than 5 s, to a worker started after
    the one running at send time stopped (SIGTERM): no worker holds it while it waits."""
    first = spawn(args=["--threads", "2"])
    first.wait_consuming()
    sent = time.time()
    message_id = Jobs.send(Job(n=1), delay=DELAY_S)

    first.signal(signal.SIGTERM)
    assert first.wait(20) == 0, first.log()
    second = spawn(args=["--threads", "2"])
    second.wait_consuming()
    assert time.time() - sent < DELAY_S, "the new worker came too late to test anything"

    wait_until(lambda: events(record, "done", 1), DELAY_S + 10, "the delayed job to be done")
    ((_, _, pid, handled_id),) = events(record, "start", 1)
    assert (pid, handled_id) == (second.pid, message_id)
    (arrived,) = record_times(record, "start", 1)
    assert DELAY_S <= arrived - sent < DELAY_S + 3, arrived - sent
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    assert rabbit_broker.message_count(queue) == 0


def test_delayed_message_outlives_a_broker_restart(
    rabbit_broker: RabbitBroker,
    spawn: Spawn,
    record: str,
    rabbit_url: str,
    restart_broker: Callable[[], None],
) -> None:
    """A message sent with delay=5 survives `rabbitmqctl stop_app`/`start_app` while it waits
    in the delay levels, and the worker, reconnected by itself, gets it no earlier than 5 s."""
    worker = spawn(args=["--threads", "2"])
    worker.wait_consuming()
    sent = time.time()
    message_id = Jobs.send(Job(n=1), delay=DELAY_S)
    # 5 = 0b101: it waits 4 s in level 2, then 1 s in level 0.
    level_2 = naming.delay_queue(rabbit_broker.namespace, 2)
    assert rabbit_broker.message_count(level_2) == 1
    # Still there when the broker stops (it leaves level 2 four seconds after sending).
    assert time.time() - sent < 3, "too slow to stop the broker while the message waits"

    restart_broker()

    checker = RabbitBroker(rabbit_url, namespace=rabbit_broker.namespace, auto_declare=False)
    try:
        wait_until(lambda: events(record, "done", 1), DELAY_S + 25, "the delayed job to be done")
        queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
        assert checker.message_count(queue) == 0
    finally:
        checker.close()
    ((_, _, pid, handled_id),) = events(record, "start", 1)
    assert (pid, handled_id) == (worker.pid, message_id)
    (arrived,) = record_times(record, "start", 1)
    assert arrived - sent >= DELAY_S, arrived - sent
    # Its info lines are written at least every 0.2 s: wait for them.
    wait_until(lambda: worker.log().count("worker_consuming") >= 2, 5, "the worker_consuming line")
    assert worker.process.poll() is None, "the worker must survive the broker's restart"
