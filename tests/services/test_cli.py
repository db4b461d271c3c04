"""The `leveret` command: worker start-up errors, declare, demo."""

from __future__ import annotations

from leveret.actors import actors_in
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.support import leveret_cli

leveret = leveret_cli


def test_worker_with_a_module_that_does_not_import_fails_clearly() -> None:
    result = leveret("worker", "no_such_module_anywhere", "--broker-url", "memory://")
    assert result.returncode != 0
    assert "cannot import actor module 'no_such_module_anywhere'" in result.stderr


def test_worker_with_unknown_queue_fails_clearly() -> None:
    result = leveret(
        "worker", "tests.sample_actors", "--queues", "nope", "--broker-url", "memory://"
    )
    assert result.returncode != 0
    assert "--queues names ['nope']" in result.stderr


def test_declare_creates_the_topology(rabbit_broker: RabbitBroker) -> None:
    result = leveret(
        "declare",
        "tests.sample_actors",
        "--broker-url",
        rabbit_broker.url,
        "--namespace",
        rabbit_broker.namespace,
    )
    rabbit_broker._declared.update(actors_in(["tests.sample_actors"]))  # for cleanup
    assert result.returncode == 0, result.stderr
    assert f"declared {rabbit_broker.namespace}.jobs <- tests.job" in result.stdout
    assert rabbit_broker.message_count(naming.dlq_name(rabbit_broker.namespace, "jobs")) == 0


def test_demo_runs_on_the_in_memory_broker_with_no_setup() -> None:
    result = leveret("demo")
    assert result.returncode == 0, result.stderr
    assert "3 messages handled; 1 in Billing's dead-letter queue" in result.stdout
