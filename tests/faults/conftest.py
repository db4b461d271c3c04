"""Fixtures of the fault tests: a record file, subprocess workers stopped afterwards, a proxy."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from leveret.actors import actors_in
from leveret.services import RabbitBroker
from tests.faults.helpers import Spawn
from tests.faults.netns import network  # noqa: F401  # the fixture, for every fault test
from tests.proxy import TcpProxy
from tests.support import RABBITMQCTL, WorkerProcess, wait_until


@pytest.fixture
def record(tmp_path: Path) -> str:
    """Path of the file `tests.sample_actors.Jobs` appends its start/done lines to."""
    return str(tmp_path / "record.txt")


@pytest.fixture
def spawn(rabbit_broker: RabbitBroker, namespace: str, record: str) -> Iterator[Spawn]:
    """Start `leveret worker tests.sample_actors` subprocesses; every one is killed at teardown.

    The factory takes `WorkerProcess` keyword arguments (`url`, `args`, `env`). Every actor of
    the module is declared through `rabbit_broker` first, so that the queues the workers use
    are deleted afterwards (and after the workers were killed).
    """
    rabbit_broker.declare(*actors_in(["tests.sample_actors"]))
    started: list[WorkerProcess] = []

    def start(**options: Any) -> WorkerProcess:
        env = {"LEVERET_TEST_RECORD": record, **options.pop("env", {})}
        process = WorkerProcess(["tests.sample_actors"], namespace, env=env, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def proxy(rabbit_url: str) -> Iterator[TcpProxy]:
    """A cuttable TCP proxy in front of the test RabbitMQ."""
    parts = rabbit_url.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = parts.partition(":")
    with TcpProxy((host, int(port or 5672))) as running_proxy:
        yield running_proxy


def _rabbitmqctl(*args: str) -> None:
    subprocess.run([*RABBITMQCTL, *args], check=True, capture_output=True, timeout=60)


def _accepts_connections(url: str) -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.AMQPError:
        return False
    return True


@pytest.fixture
def restart_broker(rabbit_url: str) -> Iterator[Callable[[], None]]:
    """`rabbitmqctl stop_app` then `start_app`; the broker is running again after the test,
    whatever happened, and accepts connections on its port."""
    restarted = False

    def restart() -> None:
        nonlocal restarted
        restarted = True
        _rabbitmqctl("stop_app")
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup")
        wait_until(lambda: _accepts_connections(rabbit_url), 30, "RabbitMQ to accept connections")

    try:
        yield restart
    finally:
        if restarted:
            _rabbitmqctl("start_app")  # a no-op when it is running
            _rabbitmqctl("await_startup")
            wait_until(
                lambda: _accepts_connections(rabbit_url), 60, "RabbitMQ to accept connections"
            )
