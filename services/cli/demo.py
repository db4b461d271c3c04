"""The zero-setup demo: a tiny shop's actors handling typed messages.

Run with ``leveret demo`` (in-memory broker) or ``leveret demo --broker-url amqp://…``.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import click

from leveret.actors import Actor, ActorRef, Context, Reject, actor, configure, handler, publish
from leveret.schemas import Message
from leveret.services.broker import Broker


class OrderPlaced(Message, topic="demo.orders.placed"):
    """A customer placed an order."""

    order_id: int
    email: str
    total: Decimal


class InvoiceSent(Message, topic="demo.invoices.sent"):
    """Billing sent the invoice of an order."""

    order_id: int
    amount: Decimal


class UserSignedUp(Message, topic="demo.users.signed_up"):
    """A new user signed up."""

    email: str


_seen_lock = threading.Lock()
seen: list[str] = []


def _record(line: str) -> None:
    with _seen_lock:
        seen.append(line)
    click.echo(f"  handled: {line}")


class Billing(Actor, queue="demo.billing"):
    """Charges orders and announces the invoice."""

    time_limit_s = 30

    @handler
    def charge(self, msg: OrderPlaced, ctx: Context) -> None:
        if msg.total <= 0:
            raise Reject(f"order {msg.order_id} has a non-positive total")
        ctx.log.info("charging", order_id=msg.order_id, total=str(msg.total))
        _record(f"billing charged order {msg.order_id} ({msg.total})")
        ctx.publish(InvoiceSent(order_id=msg.order_id, amount=msg.total))


class Ledger(Actor, queue="demo.ledger"):
    """Books every invoice."""

    time_limit_s = 30

    @handler
    def book(self, msg: InvoiceSent) -> None:
        _record(f"ledger booked invoice of order {msg.order_id}")


@actor(queue="demo.emails", time_limit_s=30)
def send_welcome(msg: UserSignedUp, ctx: Context) -> None:
    """Greets a new user (the seed's three steps: a module, a decorator, `.send`)."""
    _record(f"emails welcomed {msg.email} (correlation {(ctx.correlation_id or '')[:8]}…)")


DEMO_ACTORS: list[ActorRef] = [Billing, Ledger, send_welcome]


EXPECTED_HANDLED = 3


def run_demo(broker: Broker) -> int:
    """Publish a few messages and handle them; return how many were handled.

    Three are handled (charge, book, welcome); the order with a negative total is rejected
    into Billing's dead-letter queue.
    """
    configure(broker)
    broker.declare(*DEMO_ACTORS)
    click.echo(f"Leveret demo on {broker!r}")
    click.echo("publishing: 2 orders (one with a negative total), 1 sign-up")
    seen.clear()
    worker = broker.worker(DEMO_ACTORS, threads=2)
    worker.start()
    publish(OrderPlaced(order_id=1, email="ada@example.com", total=Decimal("42.50")))
    publish(OrderPlaced(order_id=2, email="bob@example.com", total=Decimal("-1")))
    send_welcome.send(UserSignedUp(email="ada@example.com"))
    # charge + book + welcome handled, the negative order dead-lettered
    deadline = time.monotonic() + 30
    while worker.stats.handled + worker.stats.dead_lettered < 4:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    worker.shutdown(10)
    dead = broker.dead_letters(Billing)
    click.echo(f"{len(seen)} messages handled; {len(dead)} in Billing's dead-letter queue:")
    for letter in dead:
        reason = letter.headers.get("x-leveret-error-message")
        click.echo(f"  dead letter {letter.message_id}: {reason}")
    return len(seen)
