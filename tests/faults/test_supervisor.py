"""`leveret worker --processes N`: the supervisor restarts, stops and rolls its children."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from leveret.actors import actors_in
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.faults.helpers import done_numbers, events
from tests.sample_actors import Crasher, Job, Jobs
from tests.support import ROOT, WorkerProcess, free_port, get_health, wait_health, wait_until

pytestmark = [pytest.mark.fault]

Supervise = Callable[..., WorkerProcess]


def live_children(process: WorkerProcess) -> set[int]:
    """Pids of the children the supervisor started and has not seen exit."""
    started = {record["pid"] for record in process.events("worker_child_started")}
    gone = {
        record["pid"]
        for name in ("worker_child_died", "worker_child_exited", "worker_reload_failed")
        for record in process.events(name)
    }
    return started - gone


def wait_ready(process: WorkerProcess, count: int, timeout_s: float = 30.0) -> None:
    """Wait until `count` children reported that they consume."""
    wait_until(
        lambda: (
            len(process.events("worker_child_ready")) >= count or process.process.poll() is not None
        ),
        timeout_s,
        f"{count} children to consume",
    )
    if process.process.poll() is not None:
        raise AssertionError(
            f"supervisor exited with {process.process.returncode}:\n{process.log()}"
        )


@pytest.fixture
def supervise(rabbit_broker: RabbitBroker, namespace: str, record: str) -> Iterator[Supervise]:
    """Start `leveret worker tests.sample_actors --processes N`; stopped at teardown.

    Every actor of the module is declared through `rabbit_broker` first, so that its queues
    are deleted afterwards.

    Teardown sends SIGTERM to each supervisor still running, then SIGKILLs whatever is left:
    the supervisor and the children it logged as started (by pid, nothing else).
    """
    rabbit_broker.declare(*actors_in(["tests.sample_actors"]))  # deleted at teardown
    started: list[WorkerProcess] = []

    def start(processes: int, *args: str) -> WorkerProcess:
        process = WorkerProcess(
            ["tests.sample_actors"],
            namespace,
            args=["--processes", str(processes), *args],
            env={"LEVERET_TEST_RECORD": record},
        )
        started.append(process)
        return process

    yield start
    for process in started:
        children = {record["pid"] for record in process.events("worker_child_started")}
        process.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        for pid in children:
            _kill_if_alive(pid)
        process.stop()


def _kill_if_alive(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_sigkilled_child_is_replaced_and_its_message_redelivered(
    rabbit_broker: RabbitBroker, supervise: Supervise, record: str
) -> None:
    """SIGKILL of a child mid-handler: a new child starts and the message is handled anyway."""
    supervisor = supervise(2, "--threads", "2")
    wait_ready(supervisor, 2)
    sent = list(range(1, 7))
    for n in sent:
        rabbit_broker.send(Jobs, Job(n=n, sleep_s=3.0 if n == 1 else 0.2))
    wait_until(lambda: events(record, "start", 1), 15, "job 1 to start")
    victim = events(record, "start", 1)[0][2]
    assert victim in live_children(supervisor)

    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: done_numbers(record) == set(sent), 30, "every job to be done")

    died = supervisor.events("worker_child_died")
    assert [(d["pid"], d["signal"]) for d in died] == [(victim, "SIGKILL")], died
    assert len(live_children(supervisor)) == 2, "the killed child was replaced"
    starts = events(record, "start", 1)
    assert len(starts) == 2, starts
    assert starts[0][3] == starts[1][3], "the redelivered message keeps its message_id"
    assert [line[2] for line in events(record, "done", 1)] != [victim]
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    wait_until(lambda: rabbit_broker.message_count(queue) == 0, 10, "the queue to be empty")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.log()


def test_every_line_says_which_process_wrote_it(
    rabbit_broker: RabbitBroker, supervise: Supervise, record: str
) -> None:
    """The children share the supervisor's standard error: each line carries the pid of the
    process that wrote it (``process``), and a child's its slot (``slot``)."""
    supervisor = supervise(2, "--threads", "2")
    wait_ready(supervisor, 2)
    children = {r["pid"]: r["slot"] for r in supervisor.events("worker_child_started")}
    # A child's lines are buffered (written every 0.2 s): its ready signal may come first.
    wait_until(lambda: len(supervisor.events("worker_consuming")) == 2, 10, "2 lines")
    consuming = supervisor.events("worker_consuming")
    assert {(r["process"], r["slot"]) for r in consuming} == set(children.items()), consuming
    for n in range(4):
        rabbit_broker.send(Jobs, Job(n=n))
    wait_until(lambda: done_numbers(record) == set(range(4)), 15, "every job to be done")
    wait_until(lambda: len(supervisor.events("message_handled")) >= 4, 10, "4 lines")
    handled = supervisor.events("message_handled")
    assert {r["process"] for r in handled} <= set(children), handled
    assert all(children[r["process"]] == r["slot"] for r in handled), handled
    own = supervisor.events("worker_child_started")
    assert {r["process"] for r in own} == {supervisor.process.pid}, own
    assert all("slot" not in r or r["slot"] in children.values() for r in own)


def test_sigterm_to_the_supervisor_finishes_work_in_flight_and_exits_0(
    rabbit_broker: RabbitBroker, supervise: Supervise, record: str
) -> None:
    """SIGTERM with handlers running: they finish, the rest waits in the queue, exit code 0."""
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    supervisor = supervise(2, "--threads", "2", "--prefetch", "3")
    wait_ready(supervisor, 2)
    sent = list(range(1, 13))
    for n in sent:
        rabbit_broker.send(Jobs, Job(n=n, sleep_s=1.5))
    wait_until(lambda: len(events(record, "start")) >= 3, 15, "jobs to be in flight")

    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.log()
    assert not live_children(supervisor)
    started = {line[1] for line in events(record, "start")}
    assert done_numbers(record) == started, "every handler in flight finished"
    assert started != set(sent), "SIGTERM should stop the children before the last jobs"
    wait_until(
        lambda: rabbit_broker.message_count(queue) == len(sent) - len(started),
        10,
        "the jobs not started to be back in the queue",
    )

    successor = supervise(2, "--threads", "4")
    wait_until(lambda: done_numbers(record) == set(sent), 30, "every job to be done")
    successor.signal(signal.SIGTERM)
    assert successor.wait(30) == 0, successor.log()
    done = sorted(line[1] for line in events(record, "done"))
    assert done == sent, f"each job done exactly once: {done}"


def test_sighup_rolls_every_child_while_messages_flow_handling_each_exactly_once(
    rabbit_broker: RabbitBroker, supervise: Supervise, record: str
) -> None:
    """SIGHUP: every child is replaced one by one; no message is lost or handled twice."""
    supervisor = supervise(2, "--threads", "2", "--prefetch", "4")
    wait_ready(supervisor, 2)
    before = live_children(supervisor)
    total = 240
    stop = threading.Event()

    def publish() -> None:
        for n in range(1, total + 1):
            if stop.is_set():
                return
            rabbit_broker.send(Jobs, Job(n=n, sleep_s=0.02))
            time.sleep(0.02)  # pacing the producer, not waiting for an outcome

    producer = threading.Thread(target=publish, daemon=True)
    producer.start()
    try:
        wait_until(lambda: len(done_numbers(record)) >= 20, 20, "the first jobs to be done")
        supervisor.signal(signal.SIGHUP)
        wait_until(lambda: supervisor.events("worker_reload_done"), 40, "the roll to complete")
        producer.join(30)
        wait_until(lambda: len(done_numbers(record)) == total, 30, "every job to be done")
    finally:
        stop.set()
    after = live_children(supervisor)
    assert len(after) == 2, after
    assert not after & before, (before, after)
    assert not supervisor.events("worker_child_died")
    done = sorted(line[1] for line in events(record, "done"))
    starts = sorted(line[1] for line in events(record, "start"))
    assert done == list(range(1, total + 1)), "each job done exactly once"
    assert starts == done, "no job started twice"
    handled_by = {line[2] for line in events(record, "done")}
    assert handled_by & before, "the old children handled jobs"
    assert handled_by & after, "the new children handled jobs"
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.log()


def test_a_module_that_cannot_be_imported_stops_the_command_at_once(namespace: str) -> None:
    """An actor module that does not import: a clear error and exit, no child is started."""
    began = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "leveret.services.cli", "worker", "tests.no_such_actors"),
            *("--processes", "3", "--namespace", namespace, "--log-format", "json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - began < 10
    assert "cannot import actor module 'tests.no_such_actors'" in result.stderr
    assert "worker_child_started" not in result.stderr + result.stdout


def test_a_child_with_a_fatal_topology_error_stops_the_supervisor_with_code_2(
    rabbit_broker: RabbitBroker, supervise: Supervise, namespace: str
) -> None:
    """A child exiting 2 (its queue exists with other arguments) is not restarted in a loop."""
    queue = naming.queue_name(namespace, Crasher.queue)
    with rabbit_broker.admin() as channel:
        channel.queue_delete(queue)  # the fixture declared it as a quorum queue
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
    try:
        supervisor = supervise(2, "--queues", Crasher.queue)
        code = supervisor.wait(30)
        assert code == 2, supervisor.log()
        assert "a restart cannot fix" in supervisor.log()
        assert supervisor.events("worker_child_failed")
        assert not supervisor.events("worker_child_died"), "no restart loop"
        assert len(supervisor.events("worker_child_started")) == 2
    finally:
        with rabbit_broker.admin() as channel:
            channel.queue_delete(queue)


def test_health_port_answers_for_all_children(
    rabbit_broker: RabbitBroker, supervise: Supervise, record: str
) -> None:
    """With --processes 2 --health-port, the supervisor answers 200 while every child consumes,
    503 while a killed child is being replaced, 200 again once it is, 503 once stopping."""
    port = free_port()
    supervisor = supervise(2, "--threads", "1", "--health-port", str(port))
    wait_ready(supervisor, 2)
    body = wait_health(port, 200)
    assert body["pid"] == supervisor.pid
    assert len(body["children"]) == 2
    victim = next(iter(live_children(supervisor)))
    os.kill(victim, signal.SIGKILL)
    wait_health(port, 503)
    wait_until(lambda: len(supervisor.events("worker_child_ready")) >= 3, 30, "a new child")
    wait_health(port, 200)
    rabbit_broker.send(Jobs, Job(n=1))
    wait_until(lambda: done_numbers(record) == {1}, 15, "the job to be done")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.log()
    assert get_health(port)[0] == 0, "the port is closed once the supervisor exited"


def test_a_child_hung_during_a_sighup_roll_is_killed_after_its_deadline(
    rabbit_broker: RabbitBroker, supervise: Supervise, record: str
) -> None:
    """The old child does not react to SIGTERM (stopped, as if hung in C code): after its
    shutdown timeout and the grace, the supervisor SIGKILLs it and the roll completes."""
    supervisor = supervise(2, "--threads", "1", "--shutdown-timeout", "1")
    wait_ready(supervisor, 2)
    before = live_children(supervisor)
    hung = min(before)
    os.kill(hung, signal.SIGSTOP)
    supervisor.signal(signal.SIGHUP)
    wait_until(lambda: supervisor.events("worker_reload_done"), 60, "the roll to complete")
    killed = supervisor.events("worker_child_killed")
    assert [record["pid"] for record in killed] == [hung], killed
    after = live_children(supervisor)
    assert len(after) == 2
    assert not after & before
    rabbit_broker.send(Jobs, Job(n=1))
    wait_until(lambda: done_numbers(record) == {1}, 15, "job 1 to be done by a new child")
    assert events(record, "done", 1)[0][2] in after
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.log()
