"""Publish a few orders for the quick start's worker: `python publish.py [count]`."""

from __future__ import annotations

import sys
from decimal import Decimal

from shop_actors import Billing, OrderPlaced, send_invoice_mail

from leveret import Broker, configure, publish

if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with Broker() as broker:  # LEVERET_BROKER_URL / LEVERET_NAMESPACE, or the local RabbitMQ
        configure(broker)
        broker.declare(Billing, send_invoice_mail)
        for order_id in range(1, count + 1):
            message_id = publish(OrderPlaced(order_id=order_id, total=Decimal("9.90")))
            print(f"published order {order_id} as {message_id}")
