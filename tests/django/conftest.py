"""Fixtures of the Django tests: a database alias per run (PostgreSQL and SQLite), the
example shop's actors on the real RabbitMQ, and helpers to read what reached a queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from shop.actors import Stock, check_stock, send_confirmation

from leveret.actors import configure
from leveret.actors.actor import ActorRef
from leveret.actors.registry import unique_queues
from leveret.django import TransactionalDispatcher
from leveret.django.registry import task_actors
from leveret.django.tasks_api import task_finished
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.support import take_all

DATABASES = ["default", "sqlite"]


@pytest.fixture(params=DATABASES, ids=["postgresql", "sqlite"])
def db_alias(request: pytest.FixtureRequest) -> str:
    """The database alias the test runs on: each such test runs on both."""
    return str(request.param)


@pytest.fixture
def shop_broker(rabbit_broker: RabbitBroker) -> RabbitBroker:
    """The real RabbitMQ (fresh namespace) with the shop's actors declared (the periodic
    stock check too: a worker process declares it), and the task
    queues of the settings' TASKS (a relay declares them too); cleaned up."""
    rabbit_broker.declare(send_confirmation, Stock, check_stock, *task_actors())
    return rabbit_broker


@pytest.fixture
def dispatcher(shop_broker: RabbitBroker, db_alias: str) -> Iterator[TransactionalDispatcher]:
    """A transaction-aware dispatcher following `db_alias`, configured for this process."""
    dispatcher = TransactionalDispatcher(shop_broker, using=db_alias)
    configure(dispatcher)
    yield dispatcher
    configure(None)


@pytest.fixture
def finished() -> Iterator[list[Any]]:
    """The results of the tasks that finish during the test (Django's `task_finished`)."""
    seen: list[Any] = []

    def receive(sender: Any, task_result: Any, **_kwargs: Any) -> None:
        seen.append(task_result)

    task_finished.connect(receive)
    yield seen
    task_finished.disconnect(receive)


def drain(broker: RabbitBroker, actor: ActorRef) -> list[str]:
    """Take every message waiting in the actor's queue; return their message ids."""
    queue = naming.queue_name(broker.namespace, unique_queues([actor])[0].queue)
    return [props.message_id or "" for props, _body in take_all(broker.url, queue)]


def waiting(broker: RabbitBroker, actor: ActorRef) -> int:
    """Messages ready in the actor's queue."""
    return broker.message_count(
        naming.queue_name(broker.namespace, unique_queues([actor])[0].queue)
    )
