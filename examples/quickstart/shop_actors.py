"""The README's quick start, runnable: `leveret worker shop_actors` in this folder."""

from __future__ import annotations

from decimal import Decimal

from leveret import Actor, Context, Message, actor, handler


class OrderPlaced(Message, topic="orders.placed"):
    order_id: int
    total: Decimal


class InvoiceSent(Message, topic="invoices.sent"):
    order_id: int


class Billing(Actor, queue="billing"):
    time_limit_s = 30  # a handler stuck longer fails (and is retried), like any error

    @handler
    def charge(self, msg: OrderPlaced, ctx: Context) -> None:
        ctx.log.info("charging", total=str(msg.total))
        ctx.publish(InvoiceSent(order_id=msg.order_id))


@actor(queue="emails", time_limit_s=30)
def send_invoice_mail(msg: InvoiceSent, ctx: Context) -> None:
    ctx.log.info("invoice_mailed", order_id=msg.order_id)
