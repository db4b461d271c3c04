"""`leveret delete-namespace`: lists a namespace's queues and exchanges, deletes them only
when told, and never touches another namespace (on the real RabbitMQ)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pika
import pytest

from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests import raw_amqp
from tests.sample_actors import Jobs
from tests.support import leveret_cli, rabbitmqctl_list, running, wait_until


def delete_namespace(
    broker: RabbitBroker, *args: str, namespace: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `leveret delete-namespace ARGS` against `broker`'s RabbitMQ."""
    return leveret_cli(
        "delete-namespace",
        *args,
        "--broker-url",
        broker.url,
        "--namespace",
        namespace or broker.namespace,
    )


def _names(what: str, prefix: str) -> set[str]:
    """The queues or exchanges on the broker whose name starts with `prefix`."""
    return {row[0] for row in rabbitmqctl_list(what, "name") if row and row[0].startswith(prefix)}


@pytest.fixture
def neighbours(rabbit_url: str, namespace: str) -> Iterator[list[RabbitBroker]]:
    """Two other namespaces with Jobs declared: one the tested namespace is a prefix of
    (``shop`` and ``shopx``), one under it (``shop`` and ``shop.eu``)."""
    brokers = [
        RabbitBroker(rabbit_url, namespace=f"{namespace}x"),
        RabbitBroker(rabbit_url, namespace=f"{namespace}.eu"),
    ]
    for broker in brokers:
        broker.declare(Jobs)
    yield brokers
    for broker in brokers:
        broker.delete(Jobs)
        broker.delete_namespace_exchanges()
        broker.close()


def _dead_letters(broker: RabbitBroker, count: int) -> None:
    with raw_amqp.client(broker.url) as client:
        for n in range(count):
            client.publish(
                naming.dlq_name(broker.namespace, Jobs.queue),
                b'{"n": %d}' % n,
                pika.BasicProperties(message_id=f"letter-{n}", type="tests.job"),
            )


def test_it_lists_what_it_would_delete_and_deletes_only_with_yes(
    rabbit_broker: RabbitBroker, neighbours: list[RabbitBroker]
) -> None:
    """Without --yes: the namespace's queues (with their messages) and exchanges are listed
    and nothing is deleted. With --yes: all of them are gone, and the namespaces it is a
    prefix of, or that are under it, keep everything."""
    rabbit_broker.declare(Jobs)
    ns = rabbit_broker.namespace
    before = {other.namespace: _names("queues", other.namespace + ".") for other in neighbours}
    mine = {naming.queue_name(ns, "jobs"), naming.dlq_name(ns, "jobs")}
    mine |= {naming.delay_queue(ns, level) for level in range(28)}

    listed = delete_namespace(rabbit_broker)
    assert listed.returncode == 0, listed.stderr
    for name in [*mine, naming.events_exchange(ns), naming.dead_exchange(ns)]:
        assert f"  {name}" in listed.stdout
    assert f"  {naming.queue_name(ns, 'jobs')}  0 messages" in listed.stdout
    assert "management API" in listed.stdout
    assert "nothing deleted" in listed.stdout
    assert f"{ns}x." not in listed.stdout
    assert f"{ns}.eu." not in listed.stdout
    assert mine <= _names("queues", ns + ".")

    deleted = delete_namespace(rabbit_broker, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    left = {name for name in _names("queues", ns + ".") if not name.startswith(f"{ns}.eu.")}
    assert left == set()
    assert {
        name for name in _names("exchanges", ns + ".") if not name.startswith(f"{ns}.eu.")
    } == set()
    for other in neighbours:
        assert _names("queues", other.namespace + ".") == before[other.namespace]
        assert naming.events_exchange(other.namespace) in _names("exchanges", other.namespace)


def test_it_refuses_queues_that_hold_messages_unless_told(rabbit_broker: RabbitBroker) -> None:
    """Two dead letters in the .dlq: --yes exits 1 naming that queue and deletes nothing;
    --yes --with-messages deletes everything, the letters included."""
    rabbit_broker.declare(Jobs)
    ns = rabbit_broker.namespace
    _dead_letters(rabbit_broker, 2)
    dlq = naming.dlq_name(ns, Jobs.queue)
    wait_until(lambda: rabbit_broker.message_count(dlq) == 2, 10, "2 dead letters")

    refused = delete_namespace(rabbit_broker, "--yes")
    assert refused.returncode == 1
    assert f"{dlq} (2 messages)" in refused.stderr
    assert "--with-messages" in refused.stderr
    assert rabbit_broker.message_count(dlq) == 2
    assert naming.events_exchange(ns) in _names("exchanges", ns + ".")

    deleted = delete_namespace(rabbit_broker, "--yes", "--with-messages")
    assert deleted.returncode == 0, deleted.stderr
    assert _names("queues", ns + ".") == set()
    assert _names("exchanges", ns + ".") == set()


def test_without_the_management_api_it_finds_the_queues_of_the_modules_given(
    rabbit_broker: RabbitBroker,
) -> None:
    """With --no-management, the namespace's own objects are found by name, an actor's
    queues only from the modules given (and the output says so); then deleted."""
    rabbit_broker.declare(Jobs)
    ns = rabbit_broker.namespace

    alone = delete_namespace(rabbit_broker, "--no-management")
    assert alone.returncode == 0, alone.stderr
    assert f"  {naming.delay_queue(ns, 0)}" in alone.stdout
    assert naming.queue_name(ns, "jobs") not in alone.stdout
    assert "MODULES" in alone.stdout

    deleted = delete_namespace(
        rabbit_broker, "tests.sample_actors", "--no-management", "--yes", "--with-messages"
    )
    assert deleted.returncode == 0, deleted.stderr
    assert _names("queues", ns + ".") == set()
    assert _names("exchanges", ns + ".") == set()


def test_it_refuses_while_a_worker_consumes_the_namespace(rabbit_broker: RabbitBroker) -> None:
    """A worker consumes an actor queue: --yes exits 1 saying to stop it; nothing deleted."""
    ns = rabbit_broker.namespace
    with running(rabbit_broker, Jobs, threads=1):
        refused = delete_namespace(rabbit_broker, "--yes", "--with-messages")
    assert refused.returncode == 1
    assert naming.queue_name(ns, "jobs") in refused.stderr
    assert "consumer" in refused.stderr
    assert naming.queue_name(ns, "jobs") in _names("queues", ns + ".")


def test_an_unknown_namespace_lists_nothing(rabbit_broker: RabbitBroker) -> None:
    result = delete_namespace(rabbit_broker, "--yes", namespace=rabbit_broker.namespace + "z")
    assert result.returncode == 0, result.stderr
    assert "nothing to delete" in result.stdout
