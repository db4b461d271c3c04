"""One broker object shared by many threads, and by a process and its forked child."""

from __future__ import annotations

import os
import threading
import traceback
from collections import Counter

import pytest

from leveret.actors import Actor, handler
from leveret.schemas import Message
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.sample_actors import Job, Jobs
from tests.support import Recorder, running, wait_until

pytestmark = [pytest.mark.fault]

THREADS = 8
PER_THREAD = 1000


class Counted(Message, topic="tests.faults.counted"):
    """A message numbered by the thread that published it."""

    thread: int
    n: int


class CountedSink(Actor, queue="counted_sink"):
    """Records every `Counted` it handles in `CountedSink.seen`."""

    seen = Recorder()

    @handler
    def take(self, msg: Counted) -> None:
        self.seen.add((msg.thread, msg.n))


def test_eight_threads_publish_through_one_broker(rabbit_broker: RabbitBroker) -> None:
    """8 threads x 1,000 publishes on one broker: all confirmed, unique ids, all handled once."""
    CountedSink.seen = Recorder()
    rabbit_broker.declare(CountedSink)
    ids: list[list[str]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    go = threading.Barrier(THREADS)

    def publish(thread: int) -> None:
        try:
            go.wait(10)
            for n in range(PER_THREAD):
                ids[thread].append(rabbit_broker.publish(Counted(thread=thread, n=n)))
        except BaseException as exc:
            errors.append(exc)

    with running(rabbit_broker, CountedSink, threads=8):
        publishers = [threading.Thread(target=publish, args=(t,)) for t in range(THREADS)]
        for thread in publishers:
            thread.start()
        for thread in publishers:
            thread.join(60)
        assert not errors, errors
        confirmed = [message_id for chunk in ids for message_id in chunk]
        assert len(confirmed) == THREADS * PER_THREAD
        assert len(set(confirmed)) == len(confirmed), "message ids must be unique"

        seen = CountedSink.seen.wait_for(THREADS * PER_THREAD, timeout_s=45)
    expected = {(t, n) for t in range(THREADS) for n in range(PER_THREAD)}
    duplicates = {key: count for key, count in Counter(seen).items() if count > 1}
    assert set(seen) == expected, f"missing: {len(expected - set(seen))}"
    assert not duplicates, f"handled more than once: {duplicates}"


def test_forked_child_publishes_through_the_parents_broker(rabbit_broker: RabbitBroker) -> None:
    """After fork() the child publishes with the parent's broker object, and so does the parent."""
    rabbit_broker.send(Jobs, Job(n=1))  # the parent's connection is up before the fork
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            rabbit_broker.send(Jobs, Job(n=2))
            rabbit_broker.close()
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, "the child could not publish"

    rabbit_broker.send(Jobs, Job(n=3))
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    wait_until(lambda: rabbit_broker.message_count(queue) == 3, 10, "3 messages in the queue")
