"""The order view: saves the order and publishes `OrderPlaced` in one transaction."""

import json

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_POST

from leveret.django import publish
from shop.messages import OrderPlaced
from shop.models import Order


@require_POST
def place_order(request: HttpRequest) -> HttpResponse:
    """POST {"product_id", "quantity", "email"}: 201 with the order id and message id."""
    data = json.loads(request.body)
    with transaction.atomic():
        order = Order.objects.create(
            product_id=data["product_id"], quantity=data["quantity"], email=data["email"]
        )
        # Sent when the transaction commits (or written to the outbox with OUTBOX on).
        message_id = publish(OrderPlaced(order_id=order.id))
    return JsonResponse({"order_id": order.id, "message_id": message_id}, status=201)
