"""The outbox for a whole block of code (`use_outbox`) or every transaction (``OUTBOX``):
every way of publishing inside it (``publish``, ``Actor.send``, ``leveret.django.send``,
``ctx.send``, ``task.enqueue()``) is kept in the outbox while the broker is unreachable,
and relayed once it is back, each message once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from pytest_django.fixtures import Settings
from shop.actors import Stock, send_confirmation
from shop.messages import OrderPlaced
from shop.tasks import restock

from leveret.actors import Context, configure, publish
from leveret.django import TransactionalDispatcher, use_outbox
from leveret.django import publish as django_publish
from leveret.django import send as django_send
from leveret.django.models import OutboxMessage
from leveret.django.relay import Relay
from leveret.django.tasks import task_actor
from leveret.schemas.envelope import Envelope
from leveret.services import RabbitBroker
from tests.django.conftest import drain
from tests.proxy import TcpProxy
from tests.support import wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=["default", "sqlite"]),
    pytest.mark.rabbitmq,
]

DEFAULT_TASKS = task_actor("default")


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy() as proxy:
        yield proxy


@pytest.fixture
def unreachable(
    proxy: TcpProxy, shop_broker: RabbitBroker, rabbit_url: str, db_alias: str
) -> Iterator[RabbitBroker]:
    """The project's publishing goes through a proxy that is cut: the broker is
    unreachable."""
    broker = RabbitBroker(
        proxy.url(rabbit_url), namespace=shop_broker.namespace, confirm_timeout_s=2
    )
    configure(TransactionalDispatcher(broker, using=db_alias))
    proxy.cut()
    yield broker
    configure(None)
    broker.close()


def _every_way_of_publishing(db_alias: str) -> dict[str, list[str]]:
    """Publish in every way there is, in one transaction; the message ids by queue."""
    ctx = Context(Envelope.new("shop.order_placed"), actor="shop.stock")
    with transaction.atomic(using=db_alias):
        fanned = [publish(OrderPlaced(order_id=1)), django_publish(OrderPlaced(order_id=2))]
        to_stock = [
            Stock.send(OrderPlaced(order_id=3)),
            django_send(Stock, OrderPlaced(order_id=4)),
            ctx.send(Stock, OrderPlaced(order_id=5)),
        ]
        fanned.append(ctx.publish(OrderPlaced(order_id=6)))
        task = restock.enqueue(1, 5).id
    return {
        "stock": fanned + to_stock,
        "confirmations": fanned,
        "tasks": [task],
    }


def _relay_and_receive(
    proxy: TcpProxy, broker: RabbitBroker, shop_broker: RabbitBroker, db_alias: str
) -> dict[str, list[str]]:
    proxy.restore()
    stop = threading.Event()
    thread = Relay(broker, using=db_alias, poll_interval_s=0.05).start(stop)
    try:
        wait_until(
            lambda: not OutboxMessage.objects.using(db_alias).filter(sent_at=None).exists(),
            30,
            "the outbox to drain",
        )
    finally:
        stop.set()
        thread.join(30)
    return {
        "stock": drain(shop_broker, Stock),
        "confirmations": drain(shop_broker, send_confirmation),
        "tasks": drain(shop_broker, DEFAULT_TASKS),
    }


def _check_each_once(sent: dict[str, list[str]], received: dict[str, list[str]]) -> None:
    for queue, ids in sent.items():
        assert sorted(received[queue]) == sorted(ids), queue


def test_use_outbox_keeps_everything_a_transaction_publishes(
    proxy: TcpProxy,
    unreachable: RabbitBroker,
    shop_broker: RabbitBroker,
    db_alias: str,
) -> None:
    """``with use_outbox():`` around a transaction, the broker unreachable: its seven
    messages (publish, Actor.send, leveret.django.send/publish, ctx.send/publish, a
    task's enqueue) are all kept in the outbox, none lost; once the broker is back the
    relay sends each exactly once."""
    with use_outbox():
        sent = _every_way_of_publishing(db_alias)
    assert OutboxMessage.objects.using(db_alias).count() == 7
    _check_each_once(sent, _relay_and_receive(proxy, unreachable, shop_broker, db_alias))


def test_use_outbox_as_a_decorator(
    proxy: TcpProxy, unreachable: RabbitBroker, shop_broker: RabbitBroker, db_alias: str
) -> None:
    """``@use_outbox()`` on a function does the same for each call."""

    @use_outbox()
    def place(n: int) -> dict[str, Any]:
        with transaction.atomic(using=db_alias):
            return {"stock": [Stock.send(OrderPlaced(order_id=n))], "task": restock.enqueue(n, 1)}

    first, second = place(1), place(2)
    assert OutboxMessage.objects.using(db_alias).count() == 4
    received = _relay_and_receive(proxy, unreachable, shop_broker, db_alias)
    assert sorted(received["stock"]) == sorted(first["stock"] + second["stock"])
    assert sorted(received["tasks"]) == sorted([first["task"].id, second["task"].id])


def test_outside_use_outbox_publishing_follows_the_commit_again(
    unreachable: RabbitBroker, db_alias: str
) -> None:
    """The block ends the scope: a later transaction publishes at commit (here: lost, the
    broker being down, as without the outbox), and ``outbox=False`` wins inside it."""
    with use_outbox(), transaction.atomic(using=db_alias):
        kept = publish(OrderPlaced(order_id=1), timeout=1)
        django_publish(OrderPlaced(order_id=2), outbox=False, timeout=1)
    with transaction.atomic(using=db_alias):
        publish(OrderPlaced(order_id=3), timeout=1)
    assert list(OutboxMessage.objects.using(db_alias).values_list("message_id", flat=True)) == [
        kept
    ]


def test_the_outbox_setting_covers_every_way_of_publishing(
    proxy: TcpProxy,
    unreachable: RabbitBroker,
    shop_broker: RabbitBroker,
    db_alias: str,
    settings: Settings,
) -> None:
    """``LEVERET["OUTBOX"] = True``: every publish inside ``transaction.atomic`` uses the
    outbox, a task's enqueue included."""
    settings.LEVERET = {**settings.LEVERET, "OUTBOX": True}
    sent = _every_way_of_publishing(db_alias)
    assert OutboxMessage.objects.using(db_alias).count() == 7
    _check_each_once(sent, _relay_and_receive(proxy, unreachable, shop_broker, db_alias))
