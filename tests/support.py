"""Helpers shared by the tests: waiters, recorders, running workers, subprocess workers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
from hypothesis import HealthCheck, settings

from leveret.actors.actor import Actor, ActorRef
from leveret.actors.schedules import Schedule
from leveret.services.broker import Broker, RabbitBroker
from leveret.services.middleware import Middleware
from leveret.services.runtime.worker import Worker
from leveret.services.topology import declarations as topology
from leveret.services.topology import naming

ROOT = Path(__file__).resolve().parent.parent
RABBIT_URL = os.environ.get("LEVERET_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBIT_ADDRESS = (
    urlsplit(RABBIT_URL).hostname or "127.0.0.1",
    urlsplit(RABBIT_URL).port or 5672,
)
"""Host and port of the broker at `RABBIT_URL` (what the tests' TCP proxies forward to)."""
RABBITMQCTL = shlex.split(os.environ.get("LEVERET_TEST_RABBITMQCTL", "rabbitmqctl"))
"""The command that is ``rabbitmqctl`` for the broker at `RABBIT_URL` (for another release:
``scripts/rabbitmq-release ctl 4.3``, which `scripts/test-release` sets)."""


def run_python(
    *args: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 60,
    stdin: str | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in `cwd` (the repository's root unless told), the repository
    importable, and wait for it (`stdin` its input): its output captured as text, its exit
    status not checked (the test does)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def leveret_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``leveret`` command with `args` in a child process (see `run_python`)."""
    return run_python("-m", "leveret.services.cli", *args, env=env, stdin=stdin)


def tick_once(broker: Broker, entry: Schedule) -> None:
    """Lead `entry` on `broker` until it sent a tick, then let the lead go."""
    scheduler = broker.scheduler([entry])
    try:
        assert scheduler.take_lead()
        wait_until(lambda: scheduler.step() > 0, 5, "a tick")
    finally:
        scheduler.close()


def take_all(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Take every message out of `queue` (full name) with plain pika: (properties, body)."""
    found: list[tuple[pika.BasicProperties, bytes]] = []
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None or props is None or body is None:
                return found
            found.append((props, body))
    finally:
        connection.close()


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it holds (is truthy); fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(0.02)


def broker_examples(count: int) -> settings:
    """Hypothesis's settings for a property tried on a broker: `count` examples, no
    deadline, none stored, and the test's fixtures shared by all its examples (they are
    slow to make, and each example cleans up after itself)."""
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


class KeptRecords(logging.Handler):
    """A logging handler keeping every record it is given, for a test to read."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, event: str) -> list[logging.LogRecord]:
        """The records of `event` (Leveret's records carry the event name as `msg`)."""
        return [record for record in self.records if record.msg == event]


class Recorder:
    """Thread-safe list of what handlers saw, with a waiter."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = threading.Condition()

    def add(self, item: Any) -> None:
        with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Any]:
        """Wait until at least `count` items arrived; return a snapshot."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.items) >= count, timeout_s):
                raise AssertionError(
                    f"timed out after {timeout_s}s: {len(self.items)} of {count} arrived"
                )
            return list(self.items)

    def __len__(self) -> int:
        with self._changed:
            return len(self.items)


def with_middleware(broker: Broker, *middleware: Middleware) -> Broker:
    """A broker on `broker`'s own transport (its queues, its connection) running
    `middleware`; the transport's confirms go to its chain from now on. What it declares
    counts as declared by `broker`, so that the test fixture deletes it."""
    observed = Broker(transport=broker.transport, middleware=middleware)
    observed._declared = broker._declared
    return observed


@contextlib.contextmanager
def running(broker: Broker, *actors: ActorRef, **options: Any) -> Iterator[Worker]:
    """A started worker for `actors` on `broker`, shut down (gracefully) on exit.

    The actors are declared through `broker` first, so the test fixture deletes them.
    """
    broker.declare(*actors)
    worker = broker.worker(actors, **options)
    worker.start()
    consuming = getattr(worker, "consuming", None)
    if consuming is not None and not consuming.wait(15):
        worker.shutdown(5)
        raise AssertionError("worker did not start consuming within 15s")
    try:
        yield worker
    finally:
        worker.shutdown(10)


class LoggedProcess:
    """A command in a subprocess, its output in a log file; killed by pid at teardown.

    Args:
        command: The command line.
        log_path: Where its standard output and error go.
        env: Added to this process's environment (with the checkout on PYTHONPATH).
        cwd: Where it runs; the checkout by default.
    """

    def __init__(
        self,
        command: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines of the process whose event is `name`, in order."""
        found = []
        for line in self.log().splitlines():
            if f'"{name}"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
        return found

    def wait_consuming(self, timeout_s: float = 20.0) -> None:
        """Wait for a worker's ``worker_consuming`` log line; fail if it exits first."""
        wait_until(
            lambda: "worker_consuming" in self.log() or self.process.poll() is not None,
            timeout_s,
            "the worker to start consuming",
        )
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()}")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        return self.process.wait(timeout_s)

    def stop_gracefully(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, wait up to `timeout_s`, then `stop` (test teardown)."""
        self.signal(signal.SIGTERM)
        try:
            self.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass  # killed below
        finally:
            self.stop()

    def stop(self) -> None:
        """Kill it if still running (test teardown)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log.close()


class WorkerProcess(LoggedProcess):
    """`leveret worker` in a subprocess, killed by pid (only the ones a test started)."""

    def __init__(
        self,
        modules: list[str],
        namespace: str,
        *,
        url: str = RABBIT_URL,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        wrapper: list[str] | None = None,
    ) -> None:
        log_path = (
            Path(os.environ.get("TMPDIR", "/tmp"))
            / f"leveret-worker-{namespace}-{time.monotonic_ns()}.log"
        )
        command = [
            *(wrapper or []),  # a command that execs the worker's (the pid stays the worker's)
            sys.executable,
            "-m",
            "leveret",
            "worker",
            *modules,
            "--broker-url",
            url,
            "--namespace",
            namespace,
            "--log-format",
            "json",
            *(args or []),
        ]
        super().__init__(command, log_path, env, cwd)


def rabbitmqctl_list(what: str, *fields: str) -> list[list[str]]:
    """The rows `rabbitmqctl list_<what>` prints for `fields` (each row split on spaces)."""
    out = subprocess.run(
        [*RABBITMQCTL, "-q", f"list_{what}", *fields],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def free_port() -> int:
    """A TCP port free on this machine now (for a worker's --health-port)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_health(port: int, timeout_s: float = 2.0) -> tuple[int, dict[str, Any]]:
    """GET a worker's health endpoint: (HTTP status, JSON body); (0, {}) if nobody answers."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout_s) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def wait_health(port: int, status: int, timeout_s: float = 20.0) -> dict[str, Any]:
    """Wait until the health endpoint on `port` answers `status`; return its JSON body."""
    seen: list[dict[str, Any]] = []

    def answers() -> bool:
        code, body = get_health(port)
        seen[:] = [body]
        return code == status

    wait_until(answers, timeout_s, f"health on port {port} to answer {status}")
    return seen[0]


def declare_as_leveret_0_1(url: str, namespace: str, actor: type[Actor], **changed: Any) -> str:
    """Declare `actor`'s quorum queue over `url` as Leveret 0.1 did (without at-least-once
    dead-lettering), with `changed` arguments on top; its name."""
    queue = naming.queue_name(namespace, actor.queue)
    steps = topology.actor_steps(namespace, actor)
    (step,) = [s for s in steps if s.kind == "queue" and s.name == queue]
    assert step.legacy_arguments is not None
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(
            queue, durable=True, arguments={**step.legacy_arguments, **changed}
        )
    finally:
        connection.close()
    return queue


@contextlib.contextmanager
def queue_policy(name: str, queue: str, definition: str) -> Iterator[None]:
    """A RabbitMQ policy `name` applying `definition` (JSON) to the queue `queue` alone (at
    priority 10), cleared on exit."""
    subprocess.run(
        [
            *RABBITMQCTL,
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "10",
            name,
            f"^{queue.replace('.', '[.]')}$",
            definition,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield
    finally:
        subprocess.run([*RABBITMQCTL, "clear_policy", name], capture_output=True, timeout=60)


def dlq_lock_held(broker: Broker, queue: str) -> bool:
    """Whether a dead-letter operation (list, show, replay, purge) holds the lock of the
    `.dlq` of `queue` (an actor's queue name) now."""
    lock = naming.dlq_lock(broker.namespace, queue)
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        connection.channel().queue_declare(lock, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code == 405  # RESOURCE_LOCKED: exclusive to another connection
    finally:
        if connection.is_open:
            connection.close()
    return True


def fill_until_refused(broker: RabbitBroker, queue: str, *, most: int = 10) -> None:
    """Publish fillers (message ids ``filler-<n>``) to `queue` (full name) with a plain
    confirming pika channel until the broker refuses one (a nack): a queue with a length
    limit and ``reject-publish`` overflow is then full. A quorum queue checks its limit as
    it stores, so it may take a message or two past it.

    Raises:
        AssertionError: The broker took `most` of them.
    """
    with broker.admin() as channel:
        channel.confirm_delivery()
        for n in range(most):
            try:
                channel.basic_publish(
                    "", queue, b"filler", pika.BasicProperties(message_id=f"filler-{n}")
                )
            except pika.exceptions.NackError:
                return
    raise AssertionError(f"{queue} never refused a message")
