"""Outbox rows written by a hostile or buggy writer (the ORM, raw SQL) never block, drop or
multiply the rows around them: on PostgreSQL and SQLite, relayed to the real RabbitMQ."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections, transaction
from django.test import Client
from shop.actors import Stock
from shop.messages import OrderPlaced

from leveret.actors import configure
from leveret.django import TransactionalDispatcher
from leveret.django.models import OutboxMessage
from leveret.django.outbox import store
from leveret.django.relay import Relay, outbox_status
from leveret.schemas.errors import InvalidArgument
from leveret.services import RabbitBroker
from leveret.services.broker import OutgoingMessage
from tests.django.conftest import drain
from tests.support import KeptRecords, wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])

# What a buggy writer stores that no message can be built from, or the broker refuses.
HOSTILE: list[tuple[str, dict[str, Any]]] = [
    ("headers that are a list", {"headers": [1, 2]}),
    ("headers that are a string", {"headers": "x-leveret-attempt"}),
    ("a delay beyond the delay levels", {"delay_s": 2**31 - 1}),
    ("a negative delay", {"delay_s": -5}),
    ("no topic", {"topic": "", "queue": None}),
    ("a queue name too long for AMQP", {"queue": "q" * 250}),
    ("a header integer AMQP cannot carry", {"headers": {"x-big": 2**70}}),
    ("a header float AMQP cannot carry", {"headers": {"x-ratio": 0.5}}),
]
DEEP_JSON = "[" * 1500 + "]" * 1500
"""Headers JSON nested deeper than Python 3.11 and 3.12 decode (3.13 reads it: a list, not
a table of headers) and SQLite's JSON_VALID accepts up to."""
DEEPER_JSON = "[" * 12_000 + "]" * 12_000
"""Headers JSON nested deeper than Python's decoder goes (about 1,000 levels on 3.11 and
3.12, 10,000 on 3.13), not deeper than PostgreSQL stores (about 14,000 with its default
max_stack_depth): the row is stored, and cannot even be read."""


@pytest.fixture
def relay_events() -> Iterator[KeptRecords]:
    handler = KeptRecords()
    logger = logging.getLogger("leveret.relay")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _good(db_alias: str, count: int, start: int = 0) -> list[str]:
    with transaction.atomic(using=db_alias):
        return [Stock.send(OrderPlaced(order_id=n)) for n in range(start, start + count)]


def _hostile_row(shop_broker: RabbitBroker, db_alias: str, group: str, **fields: Any) -> int:
    """A row saved as publishing saves one, then changed by a plain ORM update."""
    row = OutboxMessage.of(shop_broker.prepare(OrderPlaced(order_id=-1), actor=Stock), group)
    row.save(using=db_alias)
    OutboxMessage.objects.using(db_alias).filter(id=row.id).update(**fields)
    return int(row.id)


def _raw_row(db_alias: str, group: str, headers_json: str, delay_s: int) -> int:
    """A row inserted with raw SQL, as another program sharing the database might."""
    connection = connections[db_alias]
    table = connection.ops.quote_name(OutboxMessage._meta.db_table)
    now = datetime.now(UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (message_id, correlation_id, topic, queue, body, headers,"
            ' delay_s, timestamp, "group", created_at, sent_at, attempts, next_attempt_at,'
            " last_error, failed_at) VALUES (%s, NULL, %s, %s, %s, %s, %s, %s, %s, %s, NULL,"
            " 0, %s, '', NULL)",
            [
                f"raw-{group}",
                "shop.order_placed",
                "shop.stock",
                b'{"order_id": -2}',
                headers_json,
                delay_s,
                now,
                group,
                now,
                now,
            ],
        )
    found = OutboxMessage.objects.using(db_alias).filter(message_id=f"raw-{group}")
    return int(found.values_list("id", flat=True).get())


def test_rows_that_cannot_be_built_are_set_aside_and_the_rest_flow(
    shop_broker: RabbitBroker, db_alias: str, relay_events: KeptRecords
) -> None:
    """Eight kinds of unbuildable or refused rows (ORM) and one raw-SQL row among 40 good
    ones, one of them inside a good transaction: every good row arrives exactly once, each
    bad row records its error, backs off on its own, and is marked failed after its
    attempts, counted by the status; the relay never spins."""
    configure(TransactionalDispatcher(shop_broker, outbox=True, using=db_alias))
    ids = _good(db_alias, 10)
    bad = [
        _hostile_row(shop_broker, db_alias, f"bad-{n}", **fields)
        for n, (_what, fields) in enumerate(HOSTILE)
    ]
    bad.append(_raw_row(db_alias, "bad-raw", "[1, 2]", 2**31 - 1))
    bad.append(_raw_row(db_alias, "bad-deep", DEEP_JSON, 0))
    ids += _good(db_alias, 10, 10)
    # A bad row in the middle of a transaction's rows: the rows after it wait for it (the
    # transaction's order), until it is set aside as failed.
    with transaction.atomic(using=db_alias):
        ids.append(Stock.send(OrderPlaced(order_id=100)))
        bad.append(_hostile_row(shop_broker, db_alias, "", headers=[1, 2]))
        OutboxMessage.objects.using(db_alias).filter(id=bad[-1]).update(
            group=OutboxMessage.objects.using(db_alias).get(message_id=ids[-1]).group
        )
        ids.append(Stock.send(OrderPlaced(order_id=101)))
    ids += _good(db_alias, 18, 20)

    relay = Relay(shop_broker, using=db_alias, poll_interval_s=0.05, max_attempts=2)
    stop = threading.Event()
    started = time.monotonic()
    thread = relay.start(stop)
    try:
        wait_until(
            lambda: outbox_status(db_alias).failed == len(bad),
            20,
            "every bad row to be set aside as failed",
        )
        wait_until(lambda: outbox_status(db_alias).pending == 0, 10, "the good rows to go")
    finally:
        stop.set()
        thread.join(30)
    elapsed = time.monotonic() - started

    received = drain(shop_broker, Stock)
    assert sorted(received) == sorted(ids)  # each good row once, none of the bad ones
    fates = OutboxMessage.objects.using(db_alias).filter(id__in=bad)  # (a row is unreadable)
    for row_id, failed_at, sent_at, attempts, last_error in fates.values_list(
        "id", "failed_at", "sent_at", "attempts", "last_error"
    ):
        assert failed_at is not None
        assert sent_at is None
        assert attempts == 2, (row_id, attempts, last_error)
        assert last_error, row_id
    assert relay_events.named("relay_failed") == []
    assert relay_events.named("relay_publish_failed") == []
    # Each bad row was tried twice, 1 s apart: no spinning on them.
    assert len(relay_events.named("outbox_row_failed")) == len(bad)
    assert len(relay_events.named("outbox_row_refused")) == len(bad)
    assert elapsed < 15


def test_a_failed_row_shows_its_error_in_the_admin(
    shop_broker: RabbitBroker, db_alias: str
) -> None:
    """The admin lists rows set aside with their state and error, and shows each, one
    whose headers Django cannot even read included."""
    if db_alias != "default":
        pytest.skip("the admin reads the project's database")
    row_id = _hostile_row(shop_broker, db_alias, "bad", delay_s=2**31 - 1)
    deep_id = _raw_row(db_alias, "deep", DEEPER_JSON, 0)
    Relay(shop_broker, using=db_alias, max_attempts=1).run_once()
    User.objects.create_superuser("admin", "a@example.com", "pw")
    client = Client()
    client.login(username="admin", password="pw")
    listing = client.get("/admin/leveret/outboxmessage/?state=failed")
    assert listing.status_code == 200
    assert b"failed" in listing.content
    assert b"delay" in listing.content
    page = client.get(f"/admin/leveret/outboxmessage/{row_id}/change/")
    assert page.status_code == 200
    assert b"2147483647" in page.content
    page = client.get(f"/admin/leveret/outboxmessage/{deep_id}/change/")
    assert page.status_code == 200
    assert b"RecursionError" in page.content  # its last error, and its headers unreadable


UNSTORABLE: list[tuple[str, Any]] = [
    ("a delay beyond the delay levels", lambda item: replace(item, delay_s=2**31 - 1)),
    ("a negative delay", lambda item: replace(item, delay_s=-5)),
    ("headers that are a list", lambda item: _with_headers(item, [1, 2])),
    ("a header key that is not text", lambda item: _with_headers(item, {1: "a"})),
    ("a header integer AMQP cannot carry", lambda item: _with_headers(item, {"x": 2**70})),
    ("a header float", lambda item: _with_headers(item, {"x": float("nan")})),
    ("no topic", lambda item: replace(item, route=replace(item.route, topic=""))),
]


def _with_headers(item: OutgoingMessage, headers: Any) -> OutgoingMessage:
    return replace(item, envelope=replace(item.envelope, headers=headers))


@pytest.mark.parametrize(("what", "spoil"), UNSTORABLE, ids=[w for w, _ in UNSTORABLE])
def test_the_outbox_refuses_at_the_write_what_the_relay_could_not_build(
    shop_broker: RabbitBroker, db_alias: str, what: str, spoil: Any
) -> None:
    """Storing a message the relay could not build raises InvalidArgument at the call,
    saying what is wrong, and writes nothing."""
    item = spoil(shop_broker.prepare(OrderPlaced(order_id=1), actor=Stock))
    with pytest.raises(InvalidArgument, match="outbox"):
        store(item, using=db_alias)
    assert OutboxMessage.objects.using(db_alias).count() == 0
