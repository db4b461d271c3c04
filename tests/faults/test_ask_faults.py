"""Asks under faults on the real broker: the caller's connection cut while asks are in
flight, a worker SIGKILLed while answering, the request's deadline passing in the queue,
and a cluster node lost (tests/cluster has the three-node set-up)."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from pathlib import Path

import pytest

from leveret.schemas.errors import AskInterrupted, AskTimeout, BrokerUnavailable
from leveret.services import RabbitBroker
from tests.ask_actors import Answer, Oracle, Question
from tests.proxy import TcpProxy
from tests.support import WorkerProcess, wait_until

pytestmark = pytest.mark.rabbitmq


def _records(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def test_a_cut_connection_fails_every_ask_in_flight_at_once(
    rabbit_broker: RabbitBroker, proxy: TcpProxy, rabbit_url: str
) -> None:
    """20 asks wait on the asking connection (no worker answers); the proxy cuts it: each
    fails with `AskInterrupted` (or `BrokerUnavailable` if it was not sent yet) within a
    few seconds, none waits for its 60 s deadline; once the proxy is back, asks work."""
    rabbit_broker.declare(Oracle)
    caller = RabbitBroker(proxy.url(rabbit_url), namespace=rabbit_broker.namespace)
    results: list[BaseException | Answer] = []
    lock = threading.Lock()

    def ask(n: int) -> None:
        try:
            answer = caller.ask(Oracle, Question(n=n), timeout=60)
        except BaseException as exc:  # kept for the assertions
            answer = exc
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=ask, args=(n,), daemon=True) for n in range(20)]
    try:
        for thread in threads:
            thread.start()
        wait_until(
            lambda: rabbit_broker.message_count(f"{rabbit_broker.namespace}.oracle") == 20,
            15,
            "20 requests queued",
        )
        cut_at = time.monotonic()
        proxy.cut()
        for thread in threads:
            thread.join(15)
        assert time.monotonic() - cut_at < 15
        assert len(results) == 20
        kinds = {type(result) for result in results}
        assert kinds <= {AskInterrupted, BrokerUnavailable}, results
        assert AskInterrupted in kinds
    finally:
        caller.close()


def test_later_asks_work_after_the_connection_comes_back(
    rabbit_broker: RabbitBroker, proxy: TcpProxy, rabbit_url: str, tmp_path: Path
) -> None:
    rabbit_broker.declare(Oracle)
    caller = RabbitBroker(proxy.url(rabbit_url), namespace=rabbit_broker.namespace)
    worker = WorkerProcess(["tests.ask_actors"], rabbit_broker.namespace)
    try:
        worker.wait_consuming()
        assert caller.ask(Oracle, Question(n=1), timeout=20).n == 1
        proxy.cut()
        with pytest.raises((AskInterrupted, BrokerUnavailable, AskTimeout)):
            caller.ask(Oracle, Question(n=2), timeout=2)
        proxy.restore()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert caller.ask(Oracle, Question(n=3), timeout=5).n == 3
                break
            except (AskInterrupted, BrokerUnavailable, AskTimeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        worker.stop_gracefully()
        caller.close()


def test_a_worker_killed_while_answering_is_replaced_and_answered_once(
    rabbit_broker: RabbitBroker, tmp_path: Path
) -> None:
    """Two workers; the one that takes the request is SIGKILLed while its handler runs:
    the broker redelivers the request to the other, whose answer reaches the caller within
    the deadline, once (the killed one never answered)."""
    record = tmp_path / "record"
    env = {"LEVERET_TEST_RECORD": str(record)}
    rabbit_broker.declare(Oracle)
    workers = [
        WorkerProcess(
            ["tests.ask_actors"],
            rabbit_broker.namespace,
            env=env,
            args=["--threads", "1", "--prefetch", "1"],
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_consuming()
        answers: list[Answer | BaseException] = []

        def ask() -> None:
            try:
                answers.append(rabbit_broker.ask(Oracle, Question(n=7, sleep_s=2), timeout=30))
            except BaseException as exc:  # kept for the assertions
                answers.append(exc)

        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        wait_until(lambda: any(r[0] == "start" for r in _records(record)), 15, "a handler to start")
        first_pid = int(next(r for r in _records(record) if r[0] == "start")[2])
        victim = next(w for w in workers if w.pid == first_pid)
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        asking.join(30)
        assert len(answers) == 1
        [answer] = answers
        assert isinstance(answer, Answer), answer
        assert answer.pid != first_pid
        starts = [r for r in _records(record) if r[0] == "start"]
        assert [int(r[2]) for r in starts] == [first_pid, answer.pid]
    finally:
        for worker in workers:
            worker.stop()


def test_a_forked_child_asks_through_the_parents_broker(rabbit_broker: RabbitBroker) -> None:
    """After fork() the child asks with the parent's broker object (on an asking connection
    of its own), and the parent goes on asking on its own."""
    rabbit_broker.declare(Oracle)
    worker = WorkerProcess(["tests.ask_actors"], rabbit_broker.namespace)
    try:
        worker.wait_consuming()
        assert rabbit_broker.ask(Oracle, Question(n=1), timeout=20).n == 1  # connected
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            status = 1
            try:
                status = 0 if rabbit_broker.ask(Oracle, Question(n=2), timeout=20).n == 2 else 1
                rabbit_broker.close()
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0, "the child could not ask"
        assert rabbit_broker.ask(Oracle, Question(n=3), timeout=20).n == 3
    finally:
        worker.stop_gracefully()
