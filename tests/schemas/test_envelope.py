"""Envelopes of new messages: every field set, frozen like any other envelope."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from leveret.schemas.envelope import Envelope


def test_a_new_envelope_equals_one_built_field_by_field_and_is_frozen() -> None:
    stamp = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    new = Envelope.new("orders.created", correlation_id="c1", headers={"h": 1}, timestamp=stamp)
    assert new == Envelope(
        message_id=new.message_id,
        topic="orders.created",
        correlation_id="c1",
        timestamp=stamp,
        attempt=1,
        headers={"h": 1},
        redelivered=False,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.attempt = 2  # type: ignore[misc]
    assert dataclasses.replace(new, attempt=2).attempt == 2


def test_a_new_envelope_starts_its_own_chain_and_carries_no_headers_by_default() -> None:
    before = datetime.now(UTC)
    new = Envelope.new("orders.created")
    assert new.correlation_id == new.message_id
    assert dict(new.headers) == {}
    assert before <= new.timestamp <= datetime.now(UTC)
    assert (new.attempt, new.redelivered) == (1, False)


def test_a_subclass_of_envelope_gets_its_own_fields_too() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Traced(Envelope):
        trace: str = "none"

    new = Traced.new("orders.created")
    assert isinstance(new, Traced)
    assert new.trace == "none"
    assert new.correlation_id == new.message_id
