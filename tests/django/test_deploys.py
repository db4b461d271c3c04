"""Deploys declare before they publish: ``migrate`` declares the project's actors, so a
message published right after it reaches a new actor's queue; a broker that cannot be
reached makes ``migrate`` fail instead of letting the new code publish into nothing."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pytest_django.fixtures import Settings

from leveret.django.project import forget_project_broker
from leveret.django.registry import task_actors
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.django.plugin_actors import Doubler, Grumpy, Note, Tally

pytestmark = [pytest.mark.django_db(transaction=True)]

DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1/"


@pytest.fixture(autouse=True)
def _forget_the_project_broker() -> Iterator[None]:
    yield
    forget_project_broker()  # built from this test's settings: close its connection


def test_a_message_published_right_after_migrate_reaches_a_new_actor(
    rabbit_broker: RabbitBroker, namespace: str, settings: Settings
) -> None:
    queue = naming.queue_name(namespace, Tally.queue)
    settings.LEVERET = {
        "BROKER_URL": rabbit_broker.url,
        "TEST_BROKER_URL": None,  # this test is about the real broker
        "NAMESPACE": namespace,
        "ACTORS": ["tests.django.plugin_actors"],
    }
    publisher = RabbitBroker(rabbit_broker.url, namespace=namespace)
    try:
        out = io.StringIO()
        call_command("migrate", verbosity=1, stdout=out)
        # the settings' TASKS queues too; declared here so that the fixture deletes them
        rabbit_broker.declare(Tally, Grumpy, Doubler, *task_actors())
        assert (
            "Leveret: declared 5 actor queue(s): plugin.tally, plugin.grumpy, "
            "plugin.doubler, tasks.default, tasks.emails" in out.getvalue()
        )
        publisher.publish(Note(n=1))  # by topic: only a declared, bound queue takes it
        assert rabbit_broker.message_count(queue) == 1
    finally:
        publisher.close()


UNREACHABLE = {
    "BROKER_URL": DEAD_BROKER,
    "TEST_BROKER_URL": None,
    "NAMESPACE": "deploys",
    "ACTORS": ["tests.django.plugin_actors"],
}
"""Settings whose broker cannot be reached, even by the tests."""


def test_migrate_fails_when_it_cannot_declare(settings: Settings) -> None:
    settings.LEVERET = UNREACHABLE
    with pytest.raises(CommandError, match="DECLARE_ON_MIGRATE") as raised:
        call_command("migrate", verbosity=0)
    assert "unreachable" in str(raised.value)


def test_declaring_at_migrate_can_be_turned_off(settings: Settings) -> None:
    settings.LEVERET = {**UNREACHABLE, "DECLARE_ON_MIGRATE": False}
    call_command("migrate", verbosity=0)  # nothing to declare, nothing to fail
