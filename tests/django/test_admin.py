"""The outbox in the admin: rows listed with their state, bodies readable (escaped), and
"send now" publishing the selected rows to the real RabbitMQ, failed ones included."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from shop.actors import Stock
from shop.messages import OrderPlaced

from leveret.actors import configure
from leveret.django import TransactionalDispatcher, send
from leveret.django.models import OutboxMessage
from leveret.django.relay import retry_failed
from leveret.services import RabbitBroker
from tests.django.conftest import drain

pytestmark = [pytest.mark.django_db(transaction=True)]

CHANGELIST = "/admin/leveret/outboxmessage/"


@pytest.fixture
def dispatcher(shop_broker: RabbitBroker) -> Iterator[TransactionalDispatcher]:
    """The real RabbitMQ, following the default database (the one the admin shows)."""
    dispatcher = TransactionalDispatcher(shop_broker, using="default")
    configure(dispatcher)
    yield dispatcher
    configure(None)


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    return client


def test_send_now_publishes_the_selected_rows_failed_ones_too(
    admin_client: Client, dispatcher: TransactionalDispatcher, shop_broker: RabbitBroker
) -> None:
    with transaction.atomic():
        ids = [send(Stock, OrderPlaced(order_id=n), outbox=True) for n in (1, 2, 3)]
    rows = {row.message_id: row for row in OutboxMessage.objects.all()}
    OutboxMessage.objects.filter(id=rows[ids[2]].id).update(failed_at="2026-01-01T00:00Z")
    chosen = [rows[ids[0]].id, rows[ids[2]].id]

    listed = admin_client.get(CHANGELIST)
    assert listed.status_code == 200
    assert ids[0] in listed.content.decode()

    response = admin_client.post(
        CHANGELIST, {"action": "send_now", "_selected_action": chosen}, follow=True
    )
    assert response.status_code == 200
    assert "2 message(s) sent." in response.content.decode()
    assert sorted(drain(shop_broker, Stock)) == sorted([ids[0], ids[2]])
    states = {
        row.message_id: (row.sent_at is not None, row.failed_at)
        for row in OutboxMessage.objects.all()
    }
    assert states[ids[0]] == (True, None)
    assert states[ids[2]] == (True, None), "a failed row sent now is no longer failed"
    assert states[ids[1]] == (False, None), "not selected, left to the relay"
    assert retry_failed() == 0


def test_the_change_page_shows_the_body_decoded_and_escaped(
    admin_client: Client, dispatcher: TransactionalDispatcher
) -> None:
    with transaction.atomic():
        send(Stock, OrderPlaced(order_id=42), outbox=True)
        send(Stock, OrderPlaced(order_id=43), outbox=True)
    json_row, raw_row = OutboxMessage.objects.order_by("id")
    OutboxMessage.objects.filter(id=json_row.id).update(body=b'{"note": "<b>bold</b>"}')
    OutboxMessage.objects.filter(id=raw_row.id).update(body=b"\x1b[31mnot json \xff")

    page = admin_client.get(f"{CHANGELIST}{json_row.id}/change/").content.decode()
    assert "&quot;note&quot;: &quot;&lt;b&gt;bold&lt;/b&gt;&quot;" in page  # JSON, indented
    assert "<b>bold</b>" not in page

    page = admin_client.get(f"{CHANGELIST}{raw_row.id}/change/").content.decode()
    assert "\\x1b[31mnot json \\xff" in page  # shown escaped, never sent to a screen
    assert "\x1b" not in page
