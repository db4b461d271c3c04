"""The example shop (examples/shop/): its order view from 8 request threads, its order flow
on the in-memory broker, and end to end with `manage.py leveret_worker` on RabbitMQ."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.core.wsgi import get_wsgi_application
from django.db import connections
from django.test import Client
from shop.actors import Stock, send_confirmation
from shop.models import Confirmation, Product

from leveret.actors import configure
from leveret.django import TransactionalDispatcher
from leveret.services import RabbitBroker
from leveret.services.testing import memory_broker
from tests.django.conftest import drain
from tests.support import RABBIT_URL, ROOT, LoggedProcess, run_python, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

SHOP = ROOT / "examples" / "shop"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass


def _shop_env(shop_broker: RabbitBroker) -> dict[str, str]:
    """The environment of a `manage.py` process of the shop on the test database and broker."""
    database = connections["default"].settings_dict
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "shop_project.settings",
        "SHOP_DATABASE": "postgres",
        "SHOP_PG_NAME": database["NAME"],
        "SHOP_PG_HOST": database["HOST"],
        "SHOP_PG_USER": database["USER"],
        "LEVERET_BROKER_URL": RABBIT_URL,
        "LEVERET_NAMESPACE": shop_broker.namespace,
    }


def _relay_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`manage.py leveret_relay --once` of the shop, run in a process of its own."""
    return run_python(
        "manage.py", "leveret_relay", "--once", "--log-format", "json", env=env, cwd=SHOP
    )


def _order(client: Client, product: Product, quantity: int = 1) -> dict[str, object]:
    answer = client.post(
        "/orders/",
        json.dumps({"product_id": product.id, "quantity": quantity, "email": "a@example.com"}),
        content_type="application/json",
    )
    assert answer.status_code == 201, answer.content
    return dict(answer.json())


def test_view_from_8_request_threads_delivers_every_message(shop_broker: RabbitBroker) -> None:
    """A threaded WSGI server, 8 client threads, 10 orders each: 80 OrderPlaced arrive,
    each once, with the ids the view returned."""
    configure(TransactionalDispatcher(shop_broker))
    product = Product.objects.create(name="tea", stock=1000)
    server = ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler)
    server.set_app(get_wsgi_application())
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/orders/"

    def place(_n: int) -> str:
        body = json.dumps({"product_id": product.id, "quantity": 1, "email": "a@example.com"})
        request = urllib.request.Request(
            url, body.encode(), {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return str(json.loads(answer.read())["message_id"])

    try:
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(place, range(80)))
    finally:
        server.shutdown()
        server.server_close()
    assert len(set(ids)) == 80
    assert sorted(drain(shop_broker, Stock)) == sorted(ids)
    assert sorted(drain(shop_broker, send_confirmation)) == sorted(ids)


def test_order_flow_on_the_memory_broker() -> None:
    """The way users test actors in a Django test: memory broker, view, join()."""
    with memory_broker(send_confirmation, Stock) as broker:
        product = Product.objects.create(name="tea", stock=10)
        order = _order(Client(), product, quantity=3)
        broker.join()
    product.refresh_from_db()
    assert product.stock == 7
    assert Confirmation.objects.get(order_id=order["order_id"]).text.startswith("Thank you")


@pytest.mark.rabbitmq
def test_order_flow_end_to_end_with_a_worker_process(shop_broker: RabbitBroker) -> None:
    """POST an order; `manage.py leveret_worker` (a real process, on PostgreSQL and
    RabbitMQ) sends the confirmation and takes the stock, once."""
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"leveret-shop-{time.monotonic_ns()}.log"
    env = _shop_env(shop_broker)
    worker = LoggedProcess(
        [sys.executable, "manage.py", "leveret_worker", "--threads", "2", "--log-format", "json"],
        log_path,
        env=env,
        cwd=SHOP,
    )
    try:
        worker.wait_consuming(30)
        configure(TransactionalDispatcher(shop_broker))
        product = Product.objects.create(name="tea", stock=10)
        order = _order(Client(), product, quantity=4)
        wait_until(
            lambda: Confirmation.objects.filter(order_id=order["order_id"]).exists(),
            30,
            "the confirmation",
        )
        wait_until(lambda: Product.objects.get(id=product.id).stock == 6, 30, "the stock update")
    finally:
        worker.stop_gracefully(30)
    output = log_path.read_text()
    assert output.count('"message_handled"') == 2, output
    assert worker.process.returncode == 0, output


def test_leveret_relay_command_sends_pending_outbox_rows(shop_broker: RabbitBroker) -> None:
    """`manage.py leveret_relay --once` (a real process on PostgreSQL) publishes the rows an
    outbox transaction wrote, each once, and leaves none pending."""
    from django.db import transaction
    from shop.messages import OrderPlaced

    from leveret.django.models import OutboxMessage

    configure(TransactionalDispatcher(shop_broker, outbox=True))
    with transaction.atomic():
        ids = [Stock.send(OrderPlaced(order_id=n)) for n in range(5)]
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 5
    relay = _relay_once(_shop_env(shop_broker))
    assert relay.returncode == 0, relay.stderr
    assert "5 message(s) sent" in relay.stdout
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 0
    assert sorted(drain(shop_broker, Stock)) == sorted(ids)


def test_leveret_relay_once_with_the_broker_down_fails_in_seconds_and_keeps_the_rows(
    shop_broker: RabbitBroker,
) -> None:
    """`manage.py leveret_relay --once` with nothing listening on the broker's port: it
    exits non-zero within seconds (it took over 60 s), saying the broker is unreachable,
    and every row stays pending with its attempts unused."""
    from django.db import transaction
    from shop.messages import OrderPlaced

    from leveret.django.models import OutboxMessage

    configure(TransactionalDispatcher(shop_broker, outbox=True))
    with transaction.atomic():
        for n in range(5):
            Stock.send(OrderPlaced(order_id=n))
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**_shop_env(shop_broker), "LEVERET_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{port}/"}
    started = time.monotonic()
    run_python("manage.py", "check", env=env, cwd=SHOP)  # how long starting takes, now
    startup_s = time.monotonic() - started
    started = time.monotonic()
    relay = _relay_once(env)
    took_s = time.monotonic() - started
    assert relay.returncode != 0, relay.stdout
    assert "unreachable" in relay.stderr, relay.stderr
    # Seconds past what starting Django takes on this machine now (several on a loaded one).
    assert took_s < startup_s + 10, (took_s, startup_s)
    rows = OutboxMessage.objects.filter(sent_at__isnull=True)
    assert rows.count() == 5
    assert {row.attempts for row in rows} == {0}
    assert not rows.filter(failed_at__isnull=False).exists()
