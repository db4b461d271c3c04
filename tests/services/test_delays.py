"""Delay levels: routing keys, the path through the levels, and the declared topology."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leveret.services.topology import declarations as topology
from leveret.services.topology import delays


@given(st.integers(min_value=0, max_value=delays.MAX_DELAY_S))
def test_path_through_the_levels_sums_to_exactly_the_delay(delay_s: int) -> None:
    key = delays.routing_key(delay_s, queue="billing")
    assert sum(2**level for level in delays.levels_waited(key)) == delay_s


@given(
    st.integers(min_value=0, max_value=delays.MAX_DELAY_S),
    st.integers(min_value=0, max_value=delays.MAX_DELAY_S),
)
def test_routing_key_length_does_not_grow_with_the_delay(a: int, b: int) -> None:
    assert len(delays.routing_key(a, topic="x.y")) == len(delays.routing_key(b, topic="x.y"))


@given(
    st.integers(min_value=0, max_value=delays.MAX_DELAY_S),
    st.sampled_from(["queue", "topic"]),
    st.from_regex(r"[A-Za-z0-9_-]{1,20}(\.[A-Za-z0-9_-]{1,20}){0,3}", fullmatch=True),
)
def test_the_destination_is_read_back_from_a_routing_key(
    delay_s: int, kind: str, name: str
) -> None:
    """What a delayed message's routing key sends it to is read back from the key (where a
    dead letter says it was first published); other keys name nothing."""
    key = delays.routing_key(delay_s, **{kind: name})
    assert delays.destination(key) == (kind, name)
    assert delays.destination(name) is None
    assert delays.destination(key.replace(".q.", ".x.").replace(".t.", ".x.")) is None


def test_routing_key_names_the_destination() -> None:
    assert delays.routing_key(5, queue="billing").endswith(".0.1.0.1.q.billing")
    assert delays.routing_key(3, topic="orders.placed").endswith(".1.1.t.orders.placed")
    assert delays.routing_key(0, queue="q").startswith("0." * 28)


@pytest.mark.parametrize(
    ("delay", "eta", "expected"),
    [
        (None, None, 0),
        (1.2, None, 2),  # rounded up: never earlier than asked
        (timedelta(minutes=5), None, 300),
        (None, datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC), 30),
        (None, datetime(2025, 1, 1, tzinfo=UTC), 0),  # in the past: now
    ],
)
def test_delay_seconds(
    delay: float | timedelta | None, eta: datetime | None, expected: int
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert delays.delay_seconds(delay, eta, now=now) == expected


@pytest.mark.parametrize(
    ("delay", "eta", "error"),
    [
        (-1, None, "zero or positive"),
        (2**28, None, "longer than the maximum"),
        (1, datetime(2026, 1, 1, tzinfo=UTC), "not both"),
        (None, datetime(2026, 1, 1), "timezone-aware"),
    ],
)
def test_delay_seconds_refuses_bad_values(
    delay: float | None, eta: datetime | None, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        delays.delay_seconds(delay, eta, now=datetime(2026, 1, 1, tzinfo=UTC))


def test_quorum_levels_pass_messages_on_at_least_once_and_park_what_no_queue_takes() -> None:
    """On a cluster: replicated levels, at-least-once dead-lettering between them (which
    needs reject-publish overflow), a delivery exchange of their own whose alternate
    exchange keeps what no queue takes instead of retrying it forever."""
    steps = {(s.kind, s.name, s.exchange): s for s in topology.level_steps("shop", "quorum")}
    level_5 = steps[("queue", "shop.delay.quorum.5", "")]
    assert level_5.arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-message-ttl": 32_000,
        "x-dead-letter-exchange": "shop.delay.quorum.4",
    }
    assert steps[("queue", "shop.delay.quorum.0", "")].arguments["x-dead-letter-exchange"] == (
        "shop.delay.quorum.deliver"
    )
    deliver = steps[("exchange", "shop.delay.quorum.deliver", "")]
    assert deliver.arguments == {"alternate-exchange": "shop.delay.unrouted"}
    assert steps[("exchange", "shop.delay.unrouted", "")].exchange_type == "fanout"
    unrouted = steps[("queue", "shop.delay.unrouted", "")]
    assert unrouted.arguments["x-overflow"] == "drop-head"
    assert ("bind", "shop.delay.unrouted", "shop.delay.unrouted") in steps
    assert not any(name.startswith("shop.delay.") and name[11:12].isdigit() for _, name, _ in steps)


def test_both_ladders_declare_both_delivery_exchanges() -> None:
    """Actor queues are bound to both: a namespace can switch ladders while messages wait."""
    for queues in ("classic", "quorum"):
        names = {s.name for s in topology.level_steps("shop", queues) if s.kind == "exchange"}
        assert {"shop.delay.deliver", "shop.delay.quorum.deliver"} <= names


def test_level_queues_have_fixed_ttls_and_cascade_down() -> None:
    steps = {(s.kind, s.name, s.exchange): s for s in topology.level_steps("shop")}
    level_5 = steps[("queue", "shop.delay.5", "")]
    assert level_5.arguments == {
        "x-queue-type": "classic",
        "x-message-ttl": 32_000,
        "x-dead-letter-exchange": "shop.delay.4",
    }
    assert steps[("queue", "shop.delay.0", "")].arguments["x-dead-letter-exchange"] == (
        "shop.delay.deliver"
    )
    to_queue = steps[("bind", "shop.delay.5", "shop.delay.5")]
    onwards = steps[("bind_exchange", "shop.delay.4", "shop.delay.5")]
    assert to_queue.routing_key == "*." * 22 + "1.#"
    assert onwards.routing_key == "*." * 22 + "0.#"
