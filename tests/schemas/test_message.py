"""Messages: topics, immutability, tolerant reading, wire format."""

from __future__ import annotations

import json
from decimal import Decimal

import pydantic
import pytest

from leveret.schemas import (
    DefinitionError,
    InvalidMessage,
    MalformedBody,
    Message,
    decode,
    encode,
    message_class,
)
from leveret.schemas.casing import snake_case


class OrderPlaced(Message, topic="tests.orders.placed"):
    order_id: int
    total: Decimal


class UserSignedUpForTests(Message):
    email: str


def test_explicit_topic_is_kept() -> None:
    assert OrderPlaced.topic() == "tests.orders.placed"
    assert message_class("tests.orders.placed") is OrderPlaced


def test_topic_defaults_to_snake_case_class_name() -> None:
    assert UserSignedUpForTests.topic() == "user_signed_up_for_tests"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("OrderPlaced", "order_placed"), ("HTTPRequestSeen", "http_request_seen"), ("A1B", "a1_b")],
)
def test_snake_case(name: str, expected: str) -> None:
    assert snake_case(name) == expected


def test_two_classes_cannot_claim_one_topic() -> None:
    with pytest.raises(DefinitionError, match=r"already claimed by .*OrderPlaced"):

        class Other(Message, topic="tests.orders.placed"):
            x: int


def test_invalid_topic_is_refused_at_class_creation() -> None:
    with pytest.raises(DefinitionError, match="invalid topic"):

        class Bad(Message, topic="orders.*"):
            x: int


def test_messages_are_frozen() -> None:
    message = OrderPlaced(order_id=1, total=Decimal("2.50"))
    with pytest.raises(pydantic.ValidationError):
        message.order_id = 2  # type: ignore[misc]


def test_unknown_fields_are_ignored_by_readers() -> None:
    body = b'{"order_id": 7, "total": "1.10", "added_by_a_newer_producer": true}'
    assert decode(body, OrderPlaced) == OrderPlaced(order_id=7, total=Decimal("1.10"))


def test_body_is_plain_json_any_client_can_read() -> None:
    body = encode(OrderPlaced(order_id=3, total=Decimal("9.90")))
    assert json.loads(body) == {"order_id": 3, "total": "9.90"}


def test_malformed_body_keeps_raw_bytes_and_cause() -> None:
    with pytest.raises(MalformedBody) as caught:
        decode(b"\x80not json", OrderPlaced, topic="tests.orders.placed")
    assert caught.value.body == b"\x80not json"
    assert caught.value.topic == "tests.orders.placed"
    assert caught.value.__cause__ is not None


def test_invalid_fields_are_named_in_the_error() -> None:
    with pytest.raises(InvalidMessage, match="order_id"):
        decode(b'{"order_id": "seven", "total": "1"}', OrderPlaced)
