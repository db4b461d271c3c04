"""Django's Tasks API on Leveret: ``@task`` / ``.enqueue()`` runs on Leveret's workers,
follows the transaction, defers with ``run_after``, retries then dead-letters, and never
runs what a foreign message names unless it is one of the project's tasks."""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from shop.models import Product
from shop.tasks import restock

from leveret.actors import configure
from leveret.django import TransactionalDispatcher
from leveret.django.tasks import TaskCall, task_actor
from leveret.django.tasks_api import InvalidTaskError, TaskResultStatus
from leveret.schemas import wire
from leveret.services import RabbitBroker
from leveret.services.testing import MemoryBroker
from tests.django.test_example_shop import SHOP, _shop_env
from tests.support import LoggedProcess, wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]

DEFAULT = task_actor("default")


class Boom(Exception):
    pass


@pytest.fixture
def product() -> Product:
    return Product.objects.create(name="tea", stock=10)


def test_an_enqueued_task_runs_on_the_worker_runtime(
    leveret_broker: MemoryBroker, product: Product, finished: list[Any]
) -> None:
    result = restock.enqueue(product.id, 5)
    assert result.status == TaskResultStatus.READY
    assert result.backend == "default"
    leveret_broker.join()
    product.refresh_from_db()
    assert product.stock == 15
    (done,) = finished
    assert done.id == result.id  # the message id is the result id
    assert done.status == TaskResultStatus.SUCCESSFUL


def test_enqueue_follows_the_transaction(leveret_broker: MemoryBroker, product: Product) -> None:
    with contextlib.suppress(Boom), transaction.atomic():
        restock.enqueue(product.id, 5)
        raise Boom
    with transaction.atomic():
        restock.enqueue(product.id, 1)
        assert leveret_broker.pending(DEFAULT) == 0  # not before the commit
    leveret_broker.join()
    product.refresh_from_db()
    assert product.stock == 11


def test_run_after_waits_in_the_broker(leveret_broker: MemoryBroker, product: Product) -> None:
    restock.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue(product.id, 2)
    assert leveret_broker.delayed() == 1
    assert leveret_broker.pending(DEFAULT) == 0
    leveret_broker.join()  # the virtual clock jumps the hour
    product.refresh_from_db()
    assert product.stock == 12


def test_a_failing_task_is_retried_then_dead_lettered(
    leveret_broker: MemoryBroker, product: Product, finished: list[Any]
) -> None:
    restock.enqueue(product.id, 0)
    with pytest.raises(ValueError, match="positive quantity"):
        leveret_broker.join()
    (letter,) = leveret_broker.dead_letters(DEFAULT)
    assert letter.envelope().attempt == 2  # ATTEMPTS in the test settings
    assert [r.status for r in finished] == [TaskResultStatus.FAILED] * 2
    assert finished[0].errors[0].exception_class_path == "builtins.ValueError"


def test_an_unknown_queue_fails_at_enqueue() -> None:
    with pytest.raises(InvalidTaskError, match="nowhere"):
        restock.using(queue_name="nowhere").enqueue(1, 1)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("antigravity.geohash", "not in an installed app's module"),  # never imported
        ("os.system", "is not a task"),
        ("shop.models.Product", "is not a task"),
        ("shop.no_such_module.fn", "cannot be imported"),
    ],
)
def test_a_foreign_message_naming_anything_but_a_project_task_is_rejected(
    leveret_broker: MemoryBroker, path: str, reason: str
) -> None:
    DEFAULT.send(
        TaskCall(task=path, positional=["echo hi"], keywords={}, backend="x", queue_name="x")
    )
    leveret_broker.join(raise_errors=False)
    (letter,) = leveret_broker.dead_letters(DEFAULT)
    assert letter.headers[wire.ERROR_REASON] == "rejected"
    assert reason in letter.headers[wire.ERROR_MESSAGE]


@pytest.mark.rabbitmq
def test_a_task_runs_end_to_end_on_rabbitmq_with_a_worker_process(
    shop_broker: RabbitBroker, product: Product, tmp_path: Path
) -> None:
    """`manage.py migrate` declared the task queue; `manage.py leveret_worker` runs it."""
    shop_broker.declare(DEFAULT)  # what migrate does; and deleted afterwards
    log_path = tmp_path / "worker.log"
    worker = LoggedProcess(
        [sys.executable, "manage.py", "leveret_worker", "--threads", "1"],
        log_path,
        env=_shop_env(shop_broker),
        cwd=SHOP,
    )
    try:
        worker.wait_consuming(30)
        assert "tasks.default" in log_path.read_text()
        configure(TransactionalDispatcher(shop_broker))
        with transaction.atomic():
            restock.enqueue(product.id, 7)
        wait_until(lambda: Product.objects.get(id=product.id).stock == 17, 30, "the task")
    finally:
        configure(None)
        worker.stop_gracefully(30)
    assert worker.process.returncode == 0, log_path.read_text()
    assert '"task_done"' in log_path.read_text()
