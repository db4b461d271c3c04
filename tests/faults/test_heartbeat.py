"""Heartbeats flow while a handler runs: a long handler does not cost the connection."""

from __future__ import annotations

import shutil
import signal

import pytest

from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.faults.helpers import Spawn, events
from tests.sample_actors import Job, Jobs
from tests.support import RABBITMQCTL, rabbitmqctl_list, wait_until

pytestmark = [pytest.mark.fault]

HEARTBEAT_S = 2
HANDLER_S = 7.0


def _heartbeat_of(pid: int) -> int | None:
    """The heartbeat timeout RabbitMQ negotiated with the worker of this pid, if connected."""
    for fields in rabbitmqctl_list("connections", "client_properties", "timeout"):
        line = " ".join(fields)
        if "leveret worker" in line and f":{pid}" in line:
            return int(fields[-1])
    return None


def test_handler_longer_than_heartbeat_keeps_the_connection(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str, rabbit_url: str
) -> None:
    """A 7 s handler on a 2 s heartbeat: handled once, acked, no disconnect in the log."""
    rabbit_broker.declare(Jobs)
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    worker = spawn(url=f"{rabbit_url}?heartbeat={HEARTBEAT_S}", args=["--threads", "2"])
    worker.wait_consuming()
    if shutil.which(RABBITMQCTL[0]):  # the negotiated value, as the broker sees it
        assert _heartbeat_of(worker.pid) == HEARTBEAT_S

    rabbit_broker.send(Jobs, Job(n=1, sleep_s=HANDLER_S))
    wait_until(lambda: events(record, "done", 1), HANDLER_S + 10, "job 1 to be done")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.log()

    assert len(events(record, "start", 1)) == 1, events(record, "start")
    assert rabbit_broker.message_count(queue) == 0, "job 1 was not acked"
    log = worker.log()
    for trouble in ("broker_unreachable", "worker_disconnected", "ack_dropped"):
        assert trouble not in log, f"{trouble} while the handler ran:\n{log}"
    assert log.count("broker_connected") == 1, log
