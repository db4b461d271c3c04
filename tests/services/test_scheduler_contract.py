"""The scheduler's contract, the same on the in-memory broker and on the real RabbitMQ: one
leader at a time, deterministic ids, the state a new leader continues from, each catch-up
policy after a downtime, entries that come and go, one bad entry blocking no other.

The clock is the test's own (time is not waited for); lock, state and publishing are the
broker's: an exclusive queue and a stream on RabbitMQ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from leveret import every, schedule
from leveret.actors.schedules import CatchUp, Schedule
from leveret.schemas import wire
from leveret.services import MemoryBroker, RabbitBroker
from leveret.services.broker import Broker
from leveret.services.scheduling import Scheduler
from leveret.services.testing import captured_logs
from leveret.services.topology import naming
from tests.beats import T0, Beat, Beats, Clock, beat_schedule
from tests.support import take_all, wait_until


@pytest.fixture
def clock() -> Clock:
    return Clock()


Start = Callable[..., Scheduler]


@pytest.fixture
def start(broker: Broker, clock: Clock) -> Iterator[Start]:
    """Schedulers on `broker` (memory or RabbitMQ) with the test's clock; closed after."""
    broker.declare(Beats)
    made: list[Scheduler] = []

    def make(*entries: Schedule, grace_s: float = 60) -> Scheduler:
        scheduler = Scheduler(
            list(entries) or [beat_schedule()],
            broker.transport.scheduling.backend(),
            namespace=broker.namespace,
            grace_s=grace_s,
            clock=clock,
        )
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()


def sent(broker: Broker) -> list[tuple[str, str]]:
    """(message id, scheduled-at header) of every tick waiting in Beats' queue, taken."""
    name = naming.queue_name(broker.namespace, Beats.queue)
    if isinstance(broker, MemoryBroker):
        found = [(d.message_id, dict(d.headers)) for d in broker.queues[name]]
        broker.queues[name].clear()
    else:
        assert isinstance(broker, RabbitBroker)
        found = [
            (str(props.message_id), dict(props.headers or {}))
            for props, _body in take_all(broker.url, name)
        ]
    return [(message_id, str(headers[wire.SCHEDULED_AT])) for message_id, headers in found]


def _ids(name: str) -> set[str]:
    """The message ids of an entry's first 10 minutes of ticks."""
    entry = beat_schedule(name)
    return {entry.message_id(T0 + timedelta(seconds=s)) for s in range(0, 600, 10)}


def at(*seconds: int) -> list[str]:
    return [(T0 + timedelta(seconds=s)).isoformat() for s in seconds]


def lead_and_go(scheduler: Scheduler, clock: Clock, seconds: float) -> int:
    """`scheduler` takes the lead, sends what falls due in `seconds`, and goes: how many
    ticks it sent."""
    assert scheduler.take_lead()
    clock.advance(seconds)
    count = scheduler.step()
    scheduler.close()
    return count


def test_one_leader_at_a_time(start: Start) -> None:
    """While one leads the other cannot; once it closes the other can. (RabbitMQ 4.x may
    answer the close before it deleted the exclusive lock queue: a follower polls anyway,
    so the second is given a few tries.)"""
    first, second = start(), start()
    assert first.take_lead()
    assert not second.take_lead()
    first.close()
    wait_until(second.take_lead, 5, "the second scheduler to take the lead")


def test_a_new_leader_continues_from_the_stored_state_with_the_same_ids(
    broker: Broker, start: Start, clock: Clock
) -> None:
    assert lead_and_go(start(), clock, 30) == 3  # then 5 s pass before another takes over
    clock.advance(5)
    second = start()
    assert second.take_lead()
    clock.advance(10)
    assert second.step() == 1
    ticks = sent(broker)
    assert [scheduled for _id, scheduled in ticks] == at(10, 20, 30, 40)
    entry = beat_schedule()
    assert [message_id for message_id, _at in ticks] == [
        entry.message_id(T0 + timedelta(seconds=s)) for s in (10, 20, 30, 40)
    ]
    assert broker.schedule_state() == {"tests-beats": T0 + timedelta(seconds=40)}


def test_ticks_within_the_grace_period_are_sent_late_never_dropped(
    broker: Broker, start: Start, clock: Clock
) -> None:
    """A failover or a broker restart shorter than the grace: every tick goes, late."""
    lead_and_go(start(), clock, 10)
    clock.advance(45)  # nobody leads for 45 s
    second = start()
    assert second.take_lead()
    second.step()
    assert [scheduled for _id, scheduled in sent(broker)] == at(10, 20, 30, 40, 50)


@pytest.mark.parametrize(
    ("policy", "older"),
    [
        ("skip", []),
        ("latest", [3540]),
        ("all", [3500, 3510, 3520, 3530, 3540]),  # max_catch_up=5: the last five
    ],
)
def test_after_a_downtime_each_catch_up_policy(
    broker: Broker, start: Start, clock: Clock, policy: CatchUp, older: list[int]
) -> None:
    """Down for an hour: what is older than the grace (60 s) follows the policy; the last
    minute's ticks are sent in any case."""
    lead_and_go(start(beat_schedule(catch_up=policy, limit=5)), clock, 10)
    sent(broker)
    clock.advance(3590)  # now T0 + 3600; the grace reaches back to T0 + 3540
    second = start(beat_schedule(catch_up=policy, limit=5))
    with captured_logs() as logs:
        assert second.take_lead()
        second.step()
    recent = [3550, 3560, 3570, 3580, 3590, 3600]
    assert [scheduled for _id, scheduled in sent(broker)] == at(*older, *recent)
    (caught_up,) = [e for e in logs if e["event"] == "schedule_caught_up"]
    assert caught_up["policy"] == policy
    assert caught_up["missed_sent"] == len(older)


def test_a_new_entry_starts_from_now_without_backfill(
    broker: Broker, start: Start, clock: Clock
) -> None:
    lead_and_go(start(), clock, 20)
    sent(broker)
    clock.advance(100)  # taken over at T0 + 120
    second = start(beat_schedule(), beat_schedule("tests-beats-new"))
    assert second.take_lead()
    clock.advance(10)
    second.step()
    ticks = sent(broker)
    assert [scheduled for _id, scheduled in ticks if _id in _ids("tests-beats-new")] == at(130)
    old = [scheduled for _id, scheduled in ticks if _id in _ids("tests-beats")]
    assert old == at(70, 80, 90, 100, 110, 120, 130)  # the last minute, late


def test_one_entry_failing_to_build_blocks_no_other(
    broker: Broker, start: Start, clock: Clock
) -> None:
    def broken(_at: datetime) -> Beat:
        raise RuntimeError("builder bug")

    bad = schedule("tests-beats-broken", every(seconds=10), message=broken, to=Beats)
    scheduler = start(beat_schedule(), bad)
    assert scheduler.take_lead()
    clock.advance(20)
    with captured_logs() as logs:
        assert scheduler.step() == 2
    assert [scheduled for _id, scheduled in sent(broker)] == at(10, 20)
    failures = [e for e in logs if e["event"] == "schedule_tick_failed"]
    assert {e["schedule"] for e in failures} == {"tests-beats-broken"}
    assert "builder bug" in failures[0]["error"]
    clock.advance(10)
    assert scheduler.step() == 1  # and it does not try the old ticks again and again


def test_entries_from_a_live_source_come_and_go(broker: Broker, start: Start, clock: Clock) -> None:
    entries = [beat_schedule()]
    scheduler = Scheduler(
        lambda: list(entries),
        broker.transport.scheduling.backend(),
        namespace=broker.namespace,
        clock=clock,
        reload_s=0,
    )
    try:
        assert scheduler.take_lead()
        clock.advance(10)
        scheduler.step()
        entries.append(beat_schedule("tests-beats-live"))
        clock.advance(10)
        scheduler.step()
        entries.pop(0)
        clock.advance(10)
        scheduler.step()
    finally:
        scheduler.close()
    live = beat_schedule("tests-beats-live")
    ids = [message_id for message_id, _at in sent(broker)]
    assert ids == [
        beat_schedule().message_id(T0 + timedelta(seconds=10)),
        beat_schedule().message_id(T0 + timedelta(seconds=20)),  # then it was removed
        live.message_id(T0 + timedelta(seconds=30)),  # added at 20: from then on
    ]


# Clock steps (issue 24.2) ----------------------------------------------------------------

DAY = 86_400


def fives(*, catch_up: CatchUp = "skip", limit: int = 100) -> Schedule:
    """Every five minutes (T0 is on one of its ticks)."""
    return schedule(
        "tests-fives",
        every(minutes=5),
        message=lambda at: Beat(n=int(at.timestamp())),
        to=Beats,
        catch_up=catch_up,
        max_catch_up=limit,
    )


@pytest.mark.parametrize(
    ("policy", "during_the_step"),
    [
        ("skip", []),
        ("latest", [DAY + 300]),
        ("all", [DAY - 300, DAY, DAY + 300]),  # max_catch_up=3: the last three
    ],
)
def test_a_forward_clock_step_is_a_downtime_not_a_burst_and_the_entry_stays_on_time(
    broker: Broker, start: Start, clock: Clock, policy: CatchUp, during_the_step: list[int]
) -> None:
    """The leader's clock jumps a day ahead for a few seconds, then comes back: the day's
    ticks follow the catch-up policy (never 288 at once), and once the clock is right the
    entry ticks on time again, its stored tick on time too."""
    leader = start(fives(catch_up=policy, limit=3))
    assert leader.take_lead()
    clock.advance(300)
    assert leader.step() == 1
    assert [scheduled for _id, scheduled in sent(broker)] == at(300)
    clock.now = T0 + timedelta(seconds=DAY + 450)  # stepped: a day (and a bit) ahead
    with captured_logs() as logs:
        leader.step()
    assert [scheduled for _id, scheduled in sent(broker)] == at(*during_the_step)
    (caught_up,) = [e for e in logs if e["event"] == "schedule_caught_up"]
    assert caught_up["policy"] == policy
    clock.now = T0 + timedelta(seconds=304)  # 4 s later, the clock is right again
    with captured_logs() as logs:
        assert leader.step() == 0
    assert [e["event"] for e in logs].count("schedule_clock_behind") == 1
    clock.now = T0 + timedelta(seconds=600)
    assert leader.step() == 1
    assert [scheduled for _id, scheduled in sent(broker)] == at(600)
    assert broker.schedule_state()["tests-fives"] == T0 + timedelta(seconds=600)


def test_a_clock_stepped_back_does_not_silence_an_entry_until_it_catches_up(
    broker: Broker, start: Start, clock: Clock
) -> None:
    leader = start()
    assert leader.take_lead()
    clock.advance(20)
    assert leader.step() == 2
    sent(broker)
    clock.now = T0 - timedelta(hours=1)  # corrected an hour back
    assert leader.step() == 0
    clock.advance(10)
    assert leader.step() == 1
    assert [scheduled for _id, scheduled in sent(broker)] == at(-3600 + 10)


def test_a_leader_whose_clock_ran_a_day_ahead_does_not_silence_the_next_one(
    broker: Broker, start: Start, clock: Clock
) -> None:
    """Failover: a leader with a clock a day ahead stored ticks in the future; the next
    leader, with a right clock, does not trust them (logged once) and ticks on time."""
    clock.now = T0 + timedelta(seconds=DAY)
    ahead = start(fives())
    assert ahead.take_lead()
    clock.advance(300)
    assert ahead.step() == 1
    ahead.close()
    assert broker.schedule_state()["tests-fives"] == T0 + timedelta(seconds=DAY + 300)
    sent(broker)
    clock.now = T0 + timedelta(seconds=5)
    right = start(fives())
    with captured_logs() as logs:
        assert right.take_lead()
        right.step()
        clock.now = T0 + timedelta(seconds=300)
        assert right.step() == 1
        clock.now = T0 + timedelta(seconds=600)
        assert right.step() == 1
    assert [scheduled for _id, scheduled in sent(broker)] == at(300, 600)
    untrusted = [e for e in logs if e["event"] == "schedule_state_in_future"]
    assert len(untrusted) == 1
    assert untrusted[0]["schedule"] == "tests-fives"
    assert broker.schedule_state()["tests-fives"] == T0 + timedelta(seconds=600)


def test_a_stored_tick_a_little_ahead_is_trusted_within_the_tolerance(
    broker: Broker, start: Start, clock: Clock
) -> None:
    """Clocks a second or two apart (within FUTURE_TOLERANCE_S) change nothing: the next
    leader continues after the stored tick, without sending it again."""
    assert lead_and_go(start(), clock, 20) == 2
    sent(broker)
    clock.now = T0 + timedelta(seconds=18)  # the next leader's clock is 2 s behind
    second = start()
    with captured_logs() as logs:
        assert second.take_lead()
        assert second.step() == 0
    clock.advance(12)
    assert second.step() == 1
    assert [scheduled for _id, scheduled in sent(broker)] == at(30)
    assert not [e for e in logs if e["event"] == "schedule_state_in_future"]


def test_one_entrys_overflow_near_the_end_of_time_stops_no_other(
    broker: Broker, start: Start, clock: Clock
) -> None:
    """An entry whose next tick is past datetime's limit (its arithmetic overflows) is
    logged; the other entries tick, and the scheduler goes on."""
    clock.now = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    yearly = schedule("tests-beats-yearly", every(days=365), message=lambda at: Beat(n=1), to=Beats)
    scheduler = start(beat_schedule(), yearly)
    with captured_logs() as logs:
        assert scheduler.take_lead()
        clock.advance(20)
        assert scheduler.step() == 2
        clock.advance(10)
        assert scheduler.step() == 1
        scheduler.next_due()
    failed = [e for e in logs if e["event"] == "schedule_failed"]
    assert failed
    assert {e["schedule"] for e in failed} == {"tests-beats-yearly"}
    assert "OverflowError" in failed[0]["error"]
    assert len(sent(broker)) == 3
