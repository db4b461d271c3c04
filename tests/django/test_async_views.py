"""Async Django: an async view publishes through `sync_to_async` and its message follows
the transaction (at commit, or never after a rollback); an ``async def`` handler uses
Django's async ORM on a worker. Against the real RabbitMQ, on each Django CI runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from django.db import connections, transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, override_settings
from django.urls import path
from shop.actors import Stock
from shop.messages import OrderPlaced
from shop.models import Product

from leveret import Actor, handler
from leveret.django import TransactionalDispatcher
from leveret.services import RabbitBroker
from tests.django.conftest import drain
from tests.support import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])


def _place(order_id: int, alias: str, roll_back: bool) -> str:
    with transaction.atomic(using=alias):
        message_id = Stock.send(OrderPlaced(order_id=order_id))
        transaction.set_rollback(roll_back, using=alias)
    return message_id


async def place_order(request: HttpRequest) -> JsonResponse:
    """What a project's async view does: the publish and its transaction in a thread."""
    message_id = await sync_to_async(_place)(
        int(request.GET["order"]), request.GET["alias"], request.GET.get("roll_back") == "1"
    )
    return JsonResponse({"message_id": message_id})


urlpatterns = [path("place/", place_order)]


def _get(params: dict[str, Any]) -> Any:
    """The view called through Django's async request path, as under an ASGI server."""
    with override_settings(ROOT_URLCONF=__name__):
        return async_to_sync(AsyncClient().get)("/place/", params)


def test_an_async_view_publishes_at_commit(
    dispatcher: TransactionalDispatcher, shop_broker: RabbitBroker, db_alias: str
) -> None:
    response = _get({"order": 7, "alias": db_alias})
    assert response.status_code == 200
    assert drain(shop_broker, Stock) == [response.json()["message_id"]]


def test_an_async_view_that_rolls_back_publishes_nothing(
    dispatcher: TransactionalDispatcher, shop_broker: RabbitBroker, db_alias: str
) -> None:
    rolled_back = _get({"order": 8, "alias": db_alias, "roll_back": "1"})
    kept = _get({"order": 9, "alias": db_alias})
    assert rolled_back.status_code == kept.status_code == 200
    assert drain(shop_broker, Stock) == [kept.json()["message_id"]]


class Restock(Actor, queue="tests.async_restock"):
    """An async handler on Django's async ORM."""

    time_limit_s = 10

    @handler
    async def restock(self, msg: OrderPlaced) -> None:
        await Product.objects.filter(id=msg.order_id).aupdate(stock=F("stock") + 1)


@pytest.fixture
def restock_worker(rabbit_broker: RabbitBroker) -> Iterator[Any]:
    rabbit_broker.declare(Restock)
    worker = rabbit_broker.worker([Restock], threads=1)
    worker.start()
    yield worker
    worker.shutdown(10)
    # The async ORM ran in asgiref's one thread for sync code called from a loop: its
    # connection lives there (a worker process closes it when it exits).
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(10)


@pytest.mark.django_db(transaction=True)
def test_an_async_handler_uses_the_async_orm(
    rabbit_broker: RabbitBroker, restock_worker: Any
) -> None:
    product = Product.objects.create(name="tea", stock=0)
    for _ in range(3):
        rabbit_broker.send(Restock, OrderPlaced(order_id=product.id))

    def restocked() -> bool:
        product.refresh_from_db()
        return product.stock == 3

    wait_until(restocked, 20, "three restocks by the async handler")
