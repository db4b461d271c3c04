"""No fault of Leveret's own ends a thread unseen: an exception forced into the worker's
I/O-thread callback or into a handler thread's loop makes the worker unhealthy at once and
exit non-zero within seconds (so that something restarts it), with the traceback logged;
nothing is lost."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from leveret.services import RabbitBroker
from leveret.services.runtime.worker import EXIT_INTERNAL_ERROR
from leveret.services.topology import naming
from tests.fault_injection_actors import AsyncPing, Fault, Injector, Slow
from tests.faults.helpers import events
from tests.proxy import TcpProxy
from tests.support import WorkerProcess, free_port, get_health, wait_health, wait_until

pytestmark = [pytest.mark.fault]


@pytest.fixture
def injector(rabbit_broker: RabbitBroker, namespace: str, record: str) -> Iterator[WorkerProcess]:
    """A worker of `tests.fault_injection_actors` with a health port; killed at teardown."""
    rabbit_broker.declare(Injector)
    port = free_port()
    process = WorkerProcess(
        ["tests.fault_injection_actors"],
        namespace,
        args=["--threads", "2", "--shutdown-timeout", "10", "--health-port", str(port)],
        env={"LEVERET_TEST_RECORD": record},
    )
    process.health_port = port  # type: ignore[attr-defined]
    try:
        process.wait_consuming()
        wait_health(port, 200)
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("where", "logged"),
    [
        ("io", "io_thread_crashed"),
        ("handler_loop", "handler_thread_failed"),
        ("event_loop", "handler_thread_failed"),
    ],
)
def test_an_internal_fault_turns_health_red_and_exits_non_zero(
    rabbit_broker: RabbitBroker,
    injector: WorkerProcess,
    record: str,
    where: str,
    logged: str,
) -> None:
    """While a slow handler still runs, health answers 503; once it is done the process
    exits 3 (an internal error: restart me); the slow message is not lost."""
    port: int = injector.health_port  # type: ignore[attr-defined]
    rabbit_broker.send(Injector, Slow(n=1, sleep_s=3))
    wait_until(lambda: events(record, "start", 1), 10, "the slow handler to start")
    rabbit_broker.send(Injector, Fault(n=2, where=where))
    if where == "handler_loop":
        rabbit_broker.send(Injector, Slow(n=3, sleep_s=0))  # the delivery the loop fails on
    if where == "event_loop":
        rabbit_broker.send(Injector, AsyncPing(n=3))  # the delivery the task fails on
    body = wait_health(port, 503, timeout_s=5)
    assert "error" in body, body
    assert injector.wait(30) == EXIT_INTERNAL_ERROR, injector.log()
    log = [json.loads(line) for line in injector.log().splitlines() if line.startswith("{")]
    crash = next(event for event in log if event["event"] == logged)
    assert "fault injected" in crash["exception"], crash  # the traceback is in the log
    assert get_health(port)[0] == 0  # gone
    # Nothing lost: what was unacked went back to the queue.
    queue = naming.queue_name(rabbit_broker.namespace, Injector.queue)
    left = rabbit_broker.message_count(queue)
    done = {line[1] for line in events(record, "done")}
    expected = {1, 2} | ({3} if where in ("handler_loop", "event_loop") else set())
    assert len(expected - done) <= left, (done, left)


def test_sigterm_while_disconnected_lets_the_running_handler_finish(
    rabbit_broker: RabbitBroker, namespace: str, record: str, proxy: TcpProxy, rabbit_url: str
) -> None:
    """The connection is cut while a handler runs, then SIGTERM: the process waits for the
    handler (within --shutdown-timeout) instead of exiting under it."""
    rabbit_broker.declare(Injector)
    process = WorkerProcess(
        ["tests.fault_injection_actors"],
        namespace,
        url=proxy.url(rabbit_url),
        args=["--threads", "2", "--shutdown-timeout", "20"],
        env={"LEVERET_TEST_RECORD": record},
    )
    try:
        process.wait_consuming()
        rabbit_broker.send(Injector, Slow(n=1, sleep_s=4))
        wait_until(lambda: events(record, "start", 1), 10, "the handler to start")
        proxy.cut()
        wait_until(lambda: "worker_disconnected" in process.log(), 10, "the worker to notice")
        process.signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.log()
        assert events(record, "done", 1), "the process exited under its running handler"
    finally:
        proxy.restore()
        process.stop()
