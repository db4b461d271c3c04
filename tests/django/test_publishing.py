"""Publishing from Django follows the transaction: on commit, exactly once; on rollback,
never; `publish_now` at once. Run on PostgreSQL and on SQLite, against the real RabbitMQ."""

from __future__ import annotations

import pytest
from django.db import transaction
from shop.actors import Stock, send_confirmation
from shop.messages import OrderPlaced

from leveret.actors import publish
from leveret.django import TransactionalDispatcher, publish_now
from leveret.services import RabbitBroker
from tests.django.conftest import drain, waiting

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])


def test_rollback_publishes_nothing(
    dispatcher: TransactionalDispatcher, shop_broker: RabbitBroker, db_alias: str
) -> None:
    """publish and Actor.send inside a block that rolls back send nothing."""
    with transaction.atomic(using=db_alias):
        publish(OrderPlaced(order_id=1))
        Stock.send(OrderPlaced(order_id=2))
        transaction.set_rollback(True, using=db_alias)
    marker = publish_now(OrderPlaced(order_id=3))
    assert drain(shop_broker, Stock) == [marker]
    assert drain(shop_broker, send_confirmation) == [marker]


def test_savepoint_rollback_drops_only_its_messages(
    dispatcher: TransactionalDispatcher, shop_broker: RabbitBroker, db_alias: str
) -> None:
    """A message published in a rolled-back savepoint is dropped; the outer one is sent."""
    with transaction.atomic(using=db_alias):
        kept = Stock.send(OrderPlaced(order_id=1))
        with transaction.atomic(using=db_alias):
            Stock.send(OrderPlaced(order_id=2))
            transaction.set_rollback(True, using=db_alias)
    assert drain(shop_broker, Stock) == [kept]


def test_commit_publishes_exactly_once_after_commit(
    dispatcher: TransactionalDispatcher, shop_broker: RabbitBroker, db_alias: str
) -> None:
    """Nothing is sent before commit; at commit each message exactly once, in order."""
    with transaction.atomic(using=db_alias):
        first = publish(OrderPlaced(order_id=1))
        second = Stock.send(OrderPlaced(order_id=2))
        assert waiting(shop_broker, Stock) == 0
    assert drain(shop_broker, Stock) == [first, second]
    assert drain(shop_broker, send_confirmation) == [first]


def test_outside_a_transaction_publishes_at_once(
    dispatcher: TransactionalDispatcher, shop_broker: RabbitBroker
) -> None:
    """Outside atomic() a publish is confirmed before it returns."""
    message_id = publish(OrderPlaced(order_id=1))
    assert drain(shop_broker, Stock) == [message_id]


def test_publish_now_ignores_the_transaction(
    dispatcher: TransactionalDispatcher, shop_broker: RabbitBroker, db_alias: str
) -> None:
    """publish_now inside a block that rolls back is sent anyway, before the block ends."""
    with transaction.atomic(using=db_alias):
        message_id = publish_now(OrderPlaced(order_id=1))
        assert waiting(shop_broker, Stock) == 1
        transaction.set_rollback(True, using=db_alias)
    assert drain(shop_broker, Stock) == [message_id]
