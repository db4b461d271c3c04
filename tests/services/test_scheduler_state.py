"""The scheduler's stored state is untrusted input (any client on the vhost can append to
its stream): what the reader keeps is bounded and valid whatever the bodies, and whatever a
state says, a new leader never crashes and its entries tick on time.

The same on the real broker, with the bodies published by a plain pika client:
tests/faults/test_scheduler_hostile_state.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leveret.actors.schedules import valid_schedule_name
from leveret.services import MemoryBroker
from leveret.services.rabbitmq._schedule import (
    EARLIEST_TICK,
    LATEST_TICK,
    MAX_STATE_BYTES,
    merge_states,
)
from leveret.services.scheduling import MAX_STATE_ENTRIES, Scheduler
from leveret.services.testing import captured_logs
from tests.beats import T0, Beats, Clock, beat_schedule
from tests.hostile_states import any_aware, names, state_bodies

ENTRY = "tests-state-beats"


beats = beat_schedule(ENTRY)


def _valid(state: dict[str, datetime]) -> None:
    assert len(state) <= MAX_STATE_ENTRIES
    for name, tick in state.items():
        assert valid_schedule_name(name), name
        assert tick.utcoffset() == timedelta(0), tick
        assert EARLIEST_TICK <= tick < LATEST_TICK, tick


@settings(max_examples=300, deadline=None, database=None)
@given(bodies=st.lists(state_bodies(ENTRY), max_size=4))
def test_whatever_the_stream_holds_the_state_read_is_bounded_and_valid(
    bodies: list[bytes],
) -> None:
    _valid(merge_states(bodies))


def test_the_poison_of_issue_24_is_dropped_and_times_come_out_in_utc() -> None:
    """The body that stopped every scheduler is dropped (past the year 9000), as is a tick
    past the year 9999 in UTC; a tick in range but far ahead is kept, in UTC, for the
    leader to judge against its clock."""
    poison = json.dumps({"v": 1, "ticks": {ENTRY: "9999-12-31T23:59:59+00:00"}}).encode()
    assert merge_states([poison]) == {}
    shifted = json.dumps({"v": 1, "ticks": {ENTRY: "9999-12-31T23:59:59-12:00"}}).encode()
    far = json.dumps({"v": 1, "ticks": {ENTRY: "3000-01-01T00:00:00+01:00"}}).encode()
    assert merge_states([shifted, far]) == {ENTRY: datetime(2999, 12, 31, 23, tzinfo=UTC)}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000, "not JSON"),
        (b"\xff\xfe not utf-8", "not JSON"),
        (json.dumps({"v": 2, "ticks": {ENTRY: T0.isoformat()}}).encode(), "version"),
        (json.dumps({"v": True, "ticks": {ENTRY: T0.isoformat()}}).encode(), "version"),
        (json.dumps({"v": 1, "ticks": [ENTRY, T0.isoformat()]}).encode(), "ticks"),
        (json.dumps([1, 2, 3]).encode(), "object"),
        (b'{"v": 1, "ticks": {}, "pad": "' + b"x" * MAX_STATE_BYTES + b'"}', "bytes"),
    ],
)
def test_an_unreadable_state_is_logged_and_skipped(body: bytes, reason: str) -> None:
    good = json.dumps({"v": 1, "ticks": {ENTRY: T0.isoformat()}}).encode()
    with captured_logs() as logs:
        assert merge_states([good, body]) == {ENTRY: T0}
    (unreadable,) = [e for e in logs if e["event"] == "scheduler_state_unreadable"]
    assert reason in unreadable["reason"]
    assert unreadable["size"] == len(body)


def test_entries_that_are_not_schedules_are_skipped_and_counted() -> None:
    ticks: dict[str, object] = {
        ENTRY: T0.isoformat(),
        "\x1b]0;owned\x07": T0.isoformat(),  # not a schedule's name
        "x" * 300: T0.isoformat(),  # too long
        "naive": "2026-11-27T12:00:00",
        "number": 1_700_000_000,
        "listed": [T0.isoformat()],
        "long-text": T0.isoformat() + " " * 100,
        "epoch-minus": "1969-12-31T23:59:59+00:00",
    }
    with captured_logs() as logs:
        assert merge_states([json.dumps({"v": 1, "ticks": ticks}).encode()]) == {ENTRY: T0}
    (skipped,) = [e for e in logs if e["event"] == "scheduler_state_entries_skipped"]
    assert skipped["skipped"] == len(ticks) - 1


def test_a_state_with_too_many_entries_keeps_at_most_the_bound() -> None:
    ticks = {f"n{index}": T0.isoformat() for index in range(MAX_STATE_ENTRIES + 500)}
    with captured_logs() as logs:
        state = merge_states([json.dumps({"v": 1, "ticks": ticks}).encode()])
    assert len(state) == MAX_STATE_ENTRIES
    assert any(e["event"] == "scheduler_state_entries_skipped" for e in logs)


def test_the_leader_saves_at_most_the_bound_its_own_entries_first() -> None:
    broker = MemoryBroker(namespace="state-bound")
    broker.declare(Beats)
    others = {f"gone-{index}": T0 - timedelta(days=1) for index in range(MAX_STATE_ENTRIES)}
    broker.transport.scheduler_state = others
    clock = Clock()
    scheduler = Scheduler([beats], broker.transport.scheduling.backend(), clock=clock)
    try:
        assert scheduler.take_lead()
        clock.now += timedelta(seconds=10)
        assert scheduler.step() == 1
    finally:
        scheduler.close()
    stored = broker.schedule_state()
    assert len(stored) == MAX_STATE_ENTRIES
    assert stored[ENTRY] == T0 + timedelta(seconds=10)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(stored=st.dictionaries(names(ENTRY).filter(valid_schedule_name), any_aware, max_size=4))
def test_whatever_the_state_says_a_new_leader_ticks_on_time(
    stored: dict[str, datetime],
) -> None:
    """Any aware time, from the year 1 to 9999 with any offset, stored for the entry or
    others: the leader takes the lead, never raises, sends no tick from the future and
    at most the grace's worth of late ones, and sends the next tick at its time."""
    broker = MemoryBroker(namespace="state-property")
    broker.declare(Beats)
    broker.transport.scheduler_state = dict(stored)
    clock = Clock()
    scheduler = Scheduler([beats], broker.transport.scheduling.backend(), clock=clock)
    sent: list[datetime] = []
    scheduler.on_tick = lambda tick: sent.append(tick.scheduled_at)
    try:
        assert scheduler.take_lead()
        scheduler.step()
        assert all(T0 - timedelta(seconds=60) < tick <= T0 for tick in sent), sent
        assert len(sent) <= 6
        sent.clear()
        clock.now += timedelta(seconds=10)
        scheduler.step()
        assert sent == [T0 + timedelta(seconds=10)]
    finally:
        scheduler.close()
