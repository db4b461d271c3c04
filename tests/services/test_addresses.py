"""Where a publish, a retry, a delayed message and a dead letter go (both brokers ask here)."""

from __future__ import annotations

import pytest

from leveret.actors import Actor, handler
from leveret.schemas import Message
from leveret.schemas.errors import InvalidArgument
from leveret.services.topology import declarations as topology
from leveret.services.topology import delays
from leveret.services.topology.addresses import Address, Addresses

TOPIC = "tests.addresses.charged"


class Charged(Message, topic=TOPIC):
    n: int


class Billing(Actor, queue="billing"):
    @handler
    def charged(self, msg: Charged) -> None: ...


SHOP = Addresses("shop")


def test_a_send_goes_straight_to_the_actor_queue_and_a_publish_to_the_events_exchange() -> None:
    assert SHOP.publish(queue="billing", topic=TOPIC) == Address("", "shop.billing")
    assert SHOP.publish(queue=None, topic=TOPIC) == Address(
        "shop.events", "tests.addresses.charged"
    )


def test_a_delayed_message_enters_the_top_level_and_leaves_for_where_it_was_bound() -> None:
    """The delay key carries the destination: a send stays a send, a publish a publish."""
    send = SHOP.publish(queue="billing", topic=TOPIC, delay_s=5)
    fan_out = SHOP.publish(queue=None, topic=TOPIC, delay_s=5)
    assert send.exchange == fan_out.exchange == "shop.delay.27"
    assert delays.destination(send.routing_key) == ("queue", "billing")
    assert delays.destination(fan_out.routing_key) == ("topic", "tests.addresses.charged")
    assert delays.levels_waited(send.routing_key) == [2, 0]  # 4 s + 1 s


def test_quorum_delay_levels_are_entered_by_their_own_exchange() -> None:
    address = Addresses("shop", "quorum").retry("billing", 3)
    assert address.exchange == "shop.delay.quorum.27"


def test_a_retry_goes_back_to_its_own_queue_only_delayed_or_not() -> None:
    assert SHOP.retry("billing") == SHOP.queue("billing")
    later = SHOP.retry("billing", 8)
    assert later == SHOP.delayed(8, queue="billing")
    assert delays.destination(later.routing_key) == ("queue", "billing")


def test_a_dead_letter_goes_to_the_actor_dead_letter_queue() -> None:
    assert SHOP.dead_letter("billing") == Address("", "shop.billing.dlq")


def test_every_address_of_an_actor_is_something_its_topology_declares() -> None:
    """Nothing is published to an exchange or queue that declaring the actor does not make."""
    declared = {step.name for step in topology.steps("shop", [Billing])}
    addresses = [
        SHOP.publish(queue="billing", topic=TOPIC),
        SHOP.publish(queue=None, topic=TOPIC),
        SHOP.publish(queue=None, topic=TOPIC, delay_s=60),
        SHOP.retry("billing", 2),
        SHOP.dead_letter("billing"),
    ]
    for address in addresses:
        assert (address.exchange or address.routing_key) in declared, address


def test_a_delay_out_of_range_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        SHOP.delayed(delays.MAX_DELAY_S + 1, queue="billing")
