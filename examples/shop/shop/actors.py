"""Actors that follow an order (a confirmation mail, the stock), and a nightly stock check."""

from django.db import transaction
from django.db.models import F

from leveret import Actor, Tick, actor, cron, handler, periodic
from leveret.services.observability.logs import get_logger
from shop.messages import OrderPlaced
from shop.models import Confirmation, Order, Product, StockMovement


@actor(queue="shop.confirmations", time_limit_s=30)
def send_confirmation(msg: OrderPlaced) -> None:
    """'Send' the confirmation mail: recorded once, so a redelivery sends nothing twice."""
    order = Order.objects.select_related("product").get(id=msg.order_id)
    Confirmation.objects.get_or_create(
        order=order,
        defaults={"text": f"Thank you for ordering {order.quantity} x {order.product.name}."},
    )


class Stock(Actor, queue="shop.stock"):
    """Takes the ordered units from the product's stock, once per order."""

    time_limit_s = 30  # well below RabbitMQ's consumer timeout (30 min by default)

    @handler
    def take(self, msg: OrderPlaced) -> None:
        with transaction.atomic():
            order = Order.objects.get(id=msg.order_id)
            _movement, created = StockMovement.objects.get_or_create(
                order=order, defaults={"quantity": order.quantity}
            )
            if created:
                Product.objects.filter(id=order.product_id).update(
                    stock=F("stock") - order.quantity
                )


@periodic(cron("0 3 * * *", tz="Europe/Berlin"))
@actor(queue="shop.stock_check", time_limit_s=60)
def check_stock(tick: Tick) -> None:
    """Every night at 03:00 Berlin time: log the products running out (one tick per night,
    whichever scheduler leads; `manage.py leveret_worker --scheduler` sends it)."""
    low = list(Product.objects.filter(stock__lt=5).values_list("name", flat=True))
    get_logger("shop.stock").info("stock_checked", low=low, scheduled_at=str(tick.scheduled_at))
