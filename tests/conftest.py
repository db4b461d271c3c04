"""Fixtures: a namespace per test, brokers on memory and on the real RabbitMQ, cleanup.

Every test that touches RabbitMQ works in its own namespace (``lt<run>-<n>``); everything
it declared is deleted afterwards, and at the end of the session any queue or exchange left
with this run's prefix is deleted too (and reported).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from leveret.actors import configure
from leveret.services import MemoryBroker, RabbitBroker
from tests.support import RABBIT_URL, RABBITMQCTL

RUN_PREFIX = f"lt{os.getpid()}"
_counter = itertools.count(1)


def _rabbit_reachable() -> str | None:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    except pika.exceptions.AMQPError as exc:
        return f"{type(exc).__name__}: {exc}"
    connection.close()
    return None


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """The real RabbitMQ's URL; fails (never skips) when it is unreachable."""
    problem = _rabbit_reachable()
    if problem is not None:
        pytest.fail(
            f"RabbitMQ is not reachable at {RABBIT_URL} ({problem}). Start it "
            "(rabbitmq-server -detached) or set LEVERET_TEST_URL.",
            pytrace=False,
        )
    return RABBIT_URL


@pytest.fixture
def namespace() -> str:
    """A namespace no other test (or run) uses."""
    return f"{RUN_PREFIX}-{next(_counter)}"


def _delete_namespace(url: str, namespace: str) -> list[str]:
    """Delete every queue and exchange of `namespace` (needs rabbitmqctl to list them).

    Returns:
        The queues that were left and are now deleted.
    """
    names = _list("list_queues", namespace)
    exchanges = _list("list_exchanges", namespace)
    if not names and not exchanges:
        return []
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for name in names:
        channel.queue_delete(name)
    for name in exchanges:
        channel.exchange_delete(name)
    connection.close()
    return names


def _list(what: str, prefix: str) -> list[str]:
    try:
        out = subprocess.run(
            [*RABBITMQCTL, "-q", what, "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in out.split() if line.startswith(prefix)]


@pytest.fixture
def rabbit_broker(rabbit_url: str, namespace: str) -> Iterator[RabbitBroker]:
    """A `RabbitBroker` in a fresh namespace, configured for this process; cleaned up."""
    broker = RabbitBroker(rabbit_url, namespace=namespace)
    configure(broker)
    try:
        yield broker
    finally:
        configure(None)
        broker.close()
        _cleanup(broker)


def _cleanup(broker: RabbitBroker) -> None:
    declared = list(broker._declared)
    if declared:
        broker.delete(*declared)
    broker.delete_namespace_exchanges()


@pytest.fixture
def memory_broker(namespace: str) -> Iterator[MemoryBroker]:
    """A `MemoryBroker`, configured for this process."""
    broker = MemoryBroker(namespace=namespace)
    configure(broker)
    yield broker
    configure(None)


@pytest.fixture(params=["memory", "rabbitmq"])
def broker(request: pytest.FixtureRequest, namespace: str) -> Iterator[MemoryBroker | RabbitBroker]:
    """The same test on the in-memory broker and on the real RabbitMQ (contract tests)."""
    if request.param == "memory":
        yield request.getfixturevalue("memory_broker")
    else:
        yield request.getfixturevalue("rabbit_broker")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Delete whatever this run left on the broker (a crashed test, a killed worker)."""
    if _rabbit_reachable() is None:
        leaked = _delete_namespace(RABBIT_URL, RUN_PREFIX + "-")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if leaked and reporter is not None:
            reporter.write_line(
                f"warning: {len(leaked)} queue(s) of this run were left by tests and are now "
                f"deleted: {', '.join(sorted(leaked)[:10])}",
                yellow=True,
            )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start with no broker configured: pytest-django set up Django, whose Leveret app
    configured one from the test settings; tests configure their own."""
    configure(None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using the real broker carry the `rabbitmq` marker (select with -m)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if (
            "rabbit_url" in fixtures
            or "rabbit_broker" in fixtures
            or ("broker" in fixtures and "[rabbitmq]" in item.nodeid)
        ):
            item.add_marker(pytest.mark.rabbitmq)
