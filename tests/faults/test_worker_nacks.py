"""A retry or dead letter the broker refuses (basic.nack) never makes the worker's other
handlers run twice.

RabbitMQ nacks a publish to a full quorum queue whose overflow is ``reject-publish``: here
the actor's `.dlq`, given a policy of one message at most and already holding one. The
worker keeps the original of a refused dead letter (it goes back to its queue and is handled
again); the messages other handler threads hold meanwhile must be settled as if nothing
happened: acked once, each handled once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from leveret.actors import NO_RETRY, Actor, Reject, handler
from leveret.schemas import Message
from leveret.services import RabbitBroker
from leveret.services.testing import captured_logs
from leveret.services.topology import naming
from tests.support import Recorder, fill_until_refused, queue_policy, running, wait_until

pytestmark = [pytest.mark.fault]


class Chore(Message, topic="tests.nacks.chore"):
    """Sleep `sleep_s`; reject on the first delivery when `reject`."""

    n: int
    sleep_s: float = 0.0
    reject: bool = False


class Chores(Actor, queue="chores", delivery_limit=50):
    retry = NO_RETRY
    seen = Recorder()
    rejected: set[int] = set()
    lock = threading.Lock()

    @handler
    def run(self, msg: Chore) -> None:
        Chores.seen.add(("start", msg.n))
        time.sleep(msg.sleep_s)
        with Chores.lock:
            first = msg.reject and msg.n not in Chores.rejected
            Chores.rejected.add(msg.n)
        if first:
            raise Reject("the first time only")
        Chores.seen.add(("done", msg.n))


@pytest.fixture
def full_dlq(rabbit_broker: RabbitBroker) -> Iterator[str]:
    """Chores' `.dlq` holds one letter and refuses (nacks) every other (a policy)."""
    rabbit_broker.declare(Chores)
    dlq = naming.dlq_name(rabbit_broker.namespace, Chores.queue)
    policy = '{"max-length": 1, "overflow": "reject-publish"}'
    with queue_policy(f"{rabbit_broker.namespace}-full-dlq", dlq, policy):
        fill_until_refused(rabbit_broker, dlq)
        yield dlq


def test_a_refused_dead_letter_does_not_make_the_other_handlers_run_twice(
    rabbit_broker: RabbitBroker, full_dlq: str
) -> None:
    """Three slow messages are being handled when a fourth is rejected and its dead letter
    refused: the three are each handled once (not given back and redelivered while their
    handlers run), the fourth is handled again (it was kept) and then acked."""
    Chores.seen = Recorder()
    Chores.rejected = set()
    with captured_logs("warning") as logs, running(rabbit_broker, Chores, threads=4) as worker:
        for n in range(3):
            Chores.send(Chore(n=n, sleep_s=3.0))
        wait_until(lambda: len(Chores.seen.items) >= 3, 10, "the slow handlers to start")
        Chores.send(Chore(n=99, reject=True))
        wait_until(
            lambda: {("done", n) for n in (0, 1, 2, 99)} <= set(Chores.seen.items),
            30,
            "every chore done",
        )
        wait_until(lambda: worker.consumer.wait_settled(0.1), 10, "every delivery settled")
    starts = sorted(n for event, n in Chores.seen.items if event == "start")
    assert starts == [0, 1, 2, 99, 99], (starts, [e["event"] for e in logs])
    assert any(event["event"] == "republish_not_stored" for event in logs), logs
    queue = naming.queue_name(rabbit_broker.namespace, Chores.queue)
    assert rabbit_broker.message_count(queue) == 0
