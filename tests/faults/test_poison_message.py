"""A message that kills every worker handling it ends in the `.dlq` through the delivery limit."""

from __future__ import annotations

import pytest

from leveret.services import RabbitBroker
from leveret.services.operations.deadletters import DeadLetter
from leveret.services.topology import naming
from tests.faults.helpers import Spawn, events
from tests.sample_actors import CRASH_EXIT_CODE, Crash, Crasher, Job, Jobs
from tests.support import WorkerProcess, wait_until

pytestmark = [pytest.mark.fault]


def test_message_killing_its_worker_is_dead_lettered_after_the_delivery_limit(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str
) -> None:
    """With ``delivery_limit=3`` the poison message is delivered exactly 4 times, then the
    broker dead-letters it, and the next worker stays up.

    RabbitMQ 3.10 quorum queues count a delivery as failed when the message comes back
    (here: the consumer's connection died with it unacked) and dead-letter it once that
    count *exceeds* ``x-delivery-limit``: deliveries 1, 2 and 3 come back with counts 1 … 3,
    delivery 4 comes back with count 4 > 3. So a poison message costs ``delivery_limit + 1``
    worker crashes, not ``delivery_limit``.
    """
    ns = rabbit_broker.namespace
    dlq = naming.dlq_name(ns, Crasher.queue)
    message_id = Crasher.send(Crash(n=1))

    def dead_lettered() -> bool:
        return rabbit_broker.message_count(dlq) == 1

    crashed: list[WorkerProcess] = []
    while True:
        # A supervisor: start a worker again each time one dies.
        assert len(crashed) <= Crasher.delivery_limit + 1, "the delivery limit did not apply"
        worker = spawn(args=["--threads", "2"])
        wait_until(
            lambda: (
                worker.process.poll() is not None
                or ("worker_consuming" in worker.log() and dead_lettered())
            ),
            30,
            "the worker to crash, or the message to be dead-lettered",
        )
        if worker.process.poll() is None:
            break
        assert worker.process.returncode == CRASH_EXIT_CODE, worker.log()
        crashed.append(worker)

    starts = events(record, "start", 1)
    assert len(starts) == Crasher.delivery_limit + 1 == 4, starts
    assert [pid for _e, _n, pid, _id in starts] == [w.pid for w in crashed]
    assert {line[3] for line in starts} == {message_id}
    assert rabbit_broker.message_count(naming.queue_name(ns, Crasher.queue)) == 0

    (delivery,) = rabbit_broker.dead_letters(Crasher)
    letter = DeadLetter.of(delivery)
    assert (letter.message_id, letter.topic, letter.reason) == (
        message_id,
        "tests.crash",
        "delivery_limit",
    )
    (death,) = delivery.headers["x-death"]
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == naming.queue_name(ns, Crasher.queue)

    # The worker that found the queue empty of poison stays up and handles other work.
    Crasher.send(Crash(n=2, crash=False))
    Jobs.send(Job(n=3))
    wait_until(
        lambda: events(record, "done", 2) and events(record, "done", 3),
        15,
        "the harmless messages to be handled",
    )
    assert {line[2] for line in events(record, "done")} == {worker.pid}
    assert worker.process.poll() is None, worker.log()
    assert rabbit_broker.message_count(dlq) == 1
