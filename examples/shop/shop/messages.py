"""The shop's messages."""

from leveret import Message


class OrderPlaced(Message, topic="shop.order_placed"):
    """An order was placed (published when its transaction commits)."""

    order_id: int
