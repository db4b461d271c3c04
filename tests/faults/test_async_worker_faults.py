"""An async worker process killed with SIGKILL loses nothing; SIGTERM drains its tasks.

Acks follow the handler also on the event loop: a job the killed worker had started but
not finished is handled again by the next worker, and every job ends with a ``done`` line
(an ack sent before its handler returned would leave a job without one).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.async_actors import AsyncJob, AsyncJobs
from tests.faults.helpers import done_numbers, events
from tests.support import WorkerProcess, wait_until

pytestmark = [pytest.mark.fault]


@pytest.fixture
def workers(
    rabbit_broker: RabbitBroker, namespace: str, tmp_path: Path
) -> Iterator[tuple[list[WorkerProcess], str]]:
    rabbit_broker.declare(AsyncJobs)
    record = str(tmp_path / "record.txt")
    started: list[WorkerProcess] = []
    yield started, record
    for process in started:
        process.stop()


def _worker(started: list[WorkerProcess], namespace: str, record: str) -> WorkerProcess:
    process = WorkerProcess(
        ["tests.async_actors"],
        namespace,
        args=["--concurrency", "10", "--threads", "1"],
        env={"LEVERET_TEST_RECORD": record},
    )
    started.append(process)
    process.wait_consuming()
    return process


def test_sigkill_with_tasks_in_flight_then_sigterm_drain_loses_nothing(
    rabbit_broker: RabbitBroker,
    namespace: str,
    workers: tuple[list[WorkerProcess], str],
) -> None:
    started, record = workers
    first = _worker(started, namespace, record)
    sent = list(range(1, 31))
    for n in sent:
        rabbit_broker.send(AsyncJobs, AsyncJob(n=n, sleep_s=1.0))
    wait_until(lambda: len(events(record, "start")) >= 10, 15, "ten jobs to start")

    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    unfinished = {n for _e, n, _pid, _id in events(record, "start")} - done_numbers(record)
    assert unfinished, "the kill came while jobs were running"

    second = _worker(started, namespace, record)
    wait_until(lambda: len(done_numbers(record)) >= len(sent) - 10, 30, "most jobs done")
    # SIGTERM while tasks run: they finish and are acked; the rest go back to the queue.
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0, second.log()
    third = _worker(started, namespace, record)
    wait_until(lambda: done_numbers(record) == set(sent), 30, "every job to be done")
    third.signal(signal.SIGTERM)
    assert third.wait(30) == 0, third.log()

    for n in unfinished:  # started by the killed worker, handled again by a later one
        pids = {pid for _e, _n, pid, _id in events(record, "done", n)}
        assert first.pid not in pids
    queue = naming.queue_name(rabbit_broker.namespace, AsyncJobs.queue)
    assert rabbit_broker.message_count(queue) == 0
