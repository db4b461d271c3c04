"""The transactional outbox and its relay, on PostgreSQL and SQLite, with the real RabbitMQ."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import transaction
from shop.actors import Stock
from shop.messages import OrderPlaced

from leveret.actors import Actor, configure, handler, publish
from leveret.django import TransactionalDispatcher
from leveret.django.models import OutboxMessage
from leveret.django.relay import Relay, outbox_status
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.django.conftest import drain
from tests.proxy import TcpProxy
from tests.support import take_all, wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])


def _pending(alias: str) -> int:
    return OutboxMessage.objects.using(alias).filter(sent_at__isnull=True).count()


def test_outbox_rolls_back_with_the_transaction(shop_broker: RabbitBroker, db_alias: str) -> None:
    """Outbox rows are written in the business transaction: a rollback leaves none."""
    configure(TransactionalDispatcher(shop_broker, outbox=True, using=db_alias))
    with transaction.atomic(using=db_alias):
        publish(OrderPlaced(order_id=1))
        transaction.set_rollback(True, using=db_alias)
    assert OutboxMessage.objects.using(db_alias).count() == 0


def test_broker_down_at_commit_loses_nothing(
    rabbit_url: str, namespace: str, shop_broker: RabbitBroker, db_alias: str
) -> None:
    """With the broker cut at commit time, every outbox message arrives once it is back,
    with the message id `send` returned, and in the transaction's order."""
    with TcpProxy() as proxy:
        through_proxy = RabbitBroker(
            proxy.url(rabbit_url), namespace=namespace, confirm_timeout_s=2
        )
        configure(TransactionalDispatcher(through_proxy, outbox=True, using=db_alias))
        proxy.cut()
        with transaction.atomic(using=db_alias):
            ids = [Stock.send(OrderPlaced(order_id=n)) for n in range(30)]
        assert _pending(db_alias) == 30
        stop = threading.Event()
        relay = Relay(through_proxy, using=db_alias, poll_interval_s=0.1, max_backoff_s=1)
        thread = relay.start(stop)
        try:
            wait_until(
                lambda: OutboxMessage.objects.using(db_alias).exclude(last_error="").exists(),
                30,
                "the relay to fail while the broker is cut",
            )
            proxy.restore()
            wait_until(lambda: _pending(db_alias) == 0, 60, "the outbox to drain")
        finally:
            stop.set()
            thread.join(30)
            through_proxy.close()
    received = drain(shop_broker, Stock)
    assert set(received) == set(ids)
    first_seen = list(dict.fromkeys(received))
    assert first_seen == ids


def test_two_relays_send_each_row_once(shop_broker: RabbitBroker, db_alias: str) -> None:
    """Two relays at once: 1,000 rows on PostgreSQL (SKIP LOCKED), 200 on SQLite (write
    lock); every message arrives exactly once."""
    total = 1000 if db_alias == "default" else 200
    configure(TransactionalDispatcher(shop_broker, outbox=True, using=db_alias))
    ids: list[str] = []
    for start in range(0, total, 100):
        with transaction.atomic(using=db_alias):
            ids += [Stock.send(OrderPlaced(order_id=n)) for n in range(start, start + 100)]
    brokers = [RabbitBroker(shop_broker.url, namespace=shop_broker.namespace) for _ in range(2)]
    relays = [Relay(b, using=db_alias, batch_size=50, poll_interval_s=0.05) for b in brokers]
    stop = threading.Event()
    threads = [relay.start(stop) for relay in relays]
    try:
        wait_until(lambda: _pending(db_alias) == 0, 90, "the outbox to drain")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for broker in brokers:
            broker.close()
    received = drain(shop_broker, Stock)
    assert len(received) == total
    assert sorted(received) == sorted(ids)
    assert sum(relay.sent for relay in relays) == total


def test_sent_rows_are_pruned(shop_broker: RabbitBroker, db_alias: str) -> None:
    """Rows sent longer ago than prune_after_s are deleted; pending rows never are."""
    configure(TransactionalDispatcher(shop_broker, outbox=True, using=db_alias))
    with transaction.atomic(using=db_alias):
        publish(OrderPlaced(order_id=1))
        publish(OrderPlaced(order_id=2))
    old = datetime.now(UTC) - timedelta(hours=2)
    first = OutboxMessage.objects.using(db_alias).order_by("id").first()
    assert first is not None
    OutboxMessage.objects.using(db_alias).filter(id=first.id).update(sent_at=old)
    relay = Relay(shop_broker, using=db_alias, prune_after_s=3600)
    assert relay.prune() == 1
    assert _pending(db_alias) == 1


class StockElsewhere(Actor, queue="shop.stock", queue_type="classic"):
    """The shop's stock queue declared with other arguments: RabbitMQ refuses it."""

    @handler
    def take(self, msg: OrderPlaced) -> None: ...


def _unroutable_row(shop_broker: RabbitBroker, db_alias: str) -> OutboxMessage:
    """A row whose queue does not exist: the broker returns it on every attempt."""
    item = shop_broker.prepare(OrderPlaced(order_id=999))
    row = OutboxMessage.of(item, group="lonely")
    row.queue = "shop.gone"
    row.save(using=db_alias)
    return row


def test_one_refused_row_neither_blocks_nor_multiplies_the_others(
    shop_broker: RabbitBroker, db_alias: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """20 good rows around one that can never be published, and the relay's own actor
    declaration refused: the 20 arrive exactly once; the bad row backs off on its own, is
    marked failed after its attempts, shows in --status, and --retry-failed brings it back."""
    configure(TransactionalDispatcher(shop_broker, outbox=True, using=db_alias))
    with transaction.atomic(using=db_alias):
        ids = [Stock.send(OrderPlaced(order_id=n)) for n in range(10)]
    bad = _unroutable_row(shop_broker, db_alias)
    with transaction.atomic(using=db_alias):
        ids += [Stock.send(OrderPlaced(order_id=n)) for n in range(10, 20)]
    relay = Relay(shop_broker, using=db_alias, actors=[StockElsewhere], max_attempts=2)

    assert relay.run_once() == 20
    assert sorted(drain(shop_broker, Stock)) == sorted(ids)
    bad.refresh_from_db(using=db_alias)
    assert (bad.attempts, bad.sent_at, bad.failed_at) == (1, None, None)
    assert "shop.gone" in bad.last_error
    assert bad.next_attempt_at > datetime.now(UTC)  # its own backoff

    assert relay.run_once() == 0  # the bad row waits; nothing is sent again
    wait_until(lambda: datetime.now(UTC) >= bad.next_attempt_at, 5, "the row's backoff")
    assert relay.run_once() == 0
    bad.refresh_from_db(using=db_alias)
    assert bad.attempts == 2
    assert bad.failed_at is not None
    assert relay.run_once() == 0
    assert drain(shop_broker, Stock) == []

    status = outbox_status(db_alias)
    assert (status.pending, status.failed) == (0, 1)
    assert bad.message_id in status.last_errors[0]
    if db_alias == "default":  # the command reads the project's database
        call_command("leveret_relay", "--status")
        out = capsys.readouterr().out
        assert "pending: 0" in out
        assert "failed: 1" in out
        call_command("leveret_relay", "--retry-failed")
        assert "1 failed row(s) put back" in capsys.readouterr().out
        assert outbox_status(db_alias).pending == 1


def test_headers_stored_with_an_outbox_row_reach_the_wire(
    shop_broker: RabbitBroker, db_alias: str
) -> None:
    """A row's headers are published with it (they were stored, and once dropped)."""
    item = shop_broker.prepare(OrderPlaced(order_id=7), actor=Stock)
    item = dataclasses.replace(
        item, envelope=dataclasses.replace(item.envelope, headers={"x-app-tenant": "acme"})
    )
    OutboxMessage.of(item, group="g").save(using=db_alias)
    assert Relay(shop_broker, using=db_alias).run_once() == 1
    queue = naming.queue_name(shop_broker.namespace, Stock.queue)
    ((props, _body),) = take_all(shop_broker.url, queue)
    assert props.message_id == item.envelope.message_id
    assert (props.headers or {})["x-app-tenant"] == "acme"
