"""Hostile states in the scheduler's stream, published by a plain pika client (issue 24.1):
the next leader (`leveret scheduler`, `leveret worker --scheduler`, or in process) never
crashes, its entries tick on time, and what it stores again is bounded and valid."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leveret.actors.schedules import valid_schedule_name
from leveret.schemas import wire
from leveret.services import RabbitBroker
from leveret.services.scheduling import MAX_STATE_ENTRIES, Scheduler
from leveret.services.topology import naming
from tests.beats import T0, Beats, Clock, beat_schedule
from tests.hostile_states import POISON_TICK, hostile_bodies, state, state_bodies
from tests.raw_amqp import client
from tests.schedule_samples import Seconds, every_second
from tests.support import LoggedProcess, broker_examples, take_all, tick_once, wait_until

pytestmark = [pytest.mark.fault]

ENTRY = "tests-hostile-beats"


beats = beat_schedule(ENTRY)


def scheduled(broker: RabbitBroker) -> list[datetime]:
    """The scheduled times of the ticks waiting in Beats' queue (taken)."""
    queue = naming.queue_name(broker.namespace, Beats.queue)
    return [
        datetime.fromisoformat(str((props.headers or {})[wire.SCHEDULED_AT]))
        for props, _body in take_all(broker.url, queue)
    ]


def publish_to_stream(broker: RabbitBroker, *bodies: bytes) -> None:
    """What any client on the vhost can do: append to the state stream (default exchange)."""
    with client(broker.url) as foreign:
        for body in bodies:
            foreign.publish(naming.scheduler_state(broker.namespace), body)


Lead = Callable[[Clock], Scheduler]


@pytest.fixture
def lead(rabbit_broker: RabbitBroker) -> Iterator[Lead]:
    """A stream with a legitimate state in it (a leader ran at T0), and a factory of new
    leaders on the test's clock; each is closed afterwards."""
    rabbit_broker.declare(Beats)
    made: list[Scheduler] = []

    def make(clock: Clock) -> Scheduler:
        scheduler = Scheduler(
            [beats],
            rabbit_broker.transport.scheduling.backend(),
            namespace=rabbit_broker.namespace,
            clock=clock,
        )
        made.append(scheduler)
        return scheduler

    first = make(Clock())
    assert first.take_lead()
    first.clock = lambda: T0 + timedelta(seconds=10)
    assert first.step() == 1
    first.close()
    assert scheduled(rabbit_broker) == [T0 + timedelta(seconds=10)]
    yield make
    for scheduler in made:
        scheduler.close()


@pytest.mark.parametrize("name", sorted(hostile_bodies(ENTRY, T0)))
def test_a_hostile_state_neither_stops_nor_silences_the_next_leader(
    rabbit_broker: RabbitBroker, lead: Lead, name: str
) -> None:
    publish_to_stream(rabbit_broker, hostile_bodies(ENTRY, T0)[name])
    clock = Clock()
    clock.now = T0 + timedelta(seconds=15)
    leader = lead(clock)
    assert leader.take_lead()
    leader.step()
    late = scheduled(rabbit_broker)
    assert all(T0 + timedelta(seconds=15 - 60) < tick <= clock.now for tick in late), late
    clock.now = T0 + timedelta(seconds=20)
    assert leader.step() == 1
    assert scheduled(rabbit_broker) == [T0 + timedelta(seconds=20)]
    stored = rabbit_broker.schedule_state()
    assert stored[ENTRY] == T0 + timedelta(seconds=20)
    assert len(stored) <= MAX_STATE_ENTRIES
    assert all(valid_schedule_name(entry) for entry in stored)


@broker_examples(30)
@given(bodies=st.lists(state_bodies(ENTRY), min_size=1, max_size=3))
def test_whatever_a_client_appends_to_the_stream_the_leader_ticks_on_time(
    rabbit_broker: RabbitBroker, lead: Lead, bodies: list[bytes]
) -> None:
    scheduled(rabbit_broker)  # what an earlier example left
    publish_to_stream(rabbit_broker, *bodies)
    clock = Clock()
    leader = lead(clock)
    try:
        assert leader.take_lead()
        leader.step()
        assert all(T0 - timedelta(seconds=60) < tick <= T0 for tick in scheduled(rabbit_broker))
        clock.now = T0 + timedelta(seconds=10)
        assert leader.step() == 1
        assert scheduled(rabbit_broker) == [T0 + timedelta(seconds=10)]
    finally:
        leader.close()


# `leveret scheduler` and `leveret worker --scheduler` in subprocesses ---------------------


@pytest.fixture
def poisoned(rabbit_broker: RabbitBroker) -> Callable[[bytes], None]:
    """A namespace whose scheduler ran (its stream holds a state), then `body` appended."""

    def poison(body: bytes) -> None:
        rabbit_broker.declare(Seconds)  # deleted with the namespace afterwards
        tick_once(rabbit_broker, every_second)
        publish_to_stream(rabbit_broker, body)

    return poison


COMMANDS = {
    "leveret scheduler": ["scheduler", "tests.schedule_samples", "--lock-poll", "0.5"],
    "leveret worker --scheduler": ["worker", "tests.schedule_samples", "--scheduler"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(state({"tests-every-second": POISON_TICK}), id="poison"),
        pytest.param(b"[" * 200_000, id="deep-nesting"),
    ],
)
def test_a_poisoned_stream_does_not_stop_the_leader_and_its_entries_tick_on_time(
    rabbit_broker: RabbitBroker,
    poisoned: Callable[[bytes], None],
    tmp_path: Path,
    command: str,
    body: bytes,
) -> None:
    poisoned(body)
    process = LoggedProcess(
        [
            *(sys.executable, "-m", "leveret", *COMMANDS[command]),
            *("--broker-url", rabbit_broker.url, "--namespace", rabbit_broker.namespace),
            *("--log-format", "json"),
        ],
        tmp_path / "leader.log",
    )
    try:
        wait_until(
            lambda: len(process.events("schedule_tick")) >= 3 or process.process.poll() is not None,
            30,
            "three ticks from the new leader",
        )
        assert process.process.poll() is None, process.log()
        assert process.events("scheduler_leading")
        noticed = ("scheduler_state_entries_skipped", "scheduler_state_unreadable")
        assert any(process.events(event) for event in noticed), process.log()
        assert process.events("schedule_tick")[-1]["lateness_s"] < 2
        process.signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.log()
    finally:
        process.stop()
    assert "scheduler_crashed" not in (tmp_path / "leader.log").read_text()
    stored = rabbit_broker.schedule_state()["tests-every-second"]
    assert abs((stored - datetime.now(UTC)).total_seconds()) < 30


def test_a_state_stream_deleted_under_a_running_leader_is_declared_again(
    rabbit_broker: RabbitBroker, lead: Lead
) -> None:
    """A client deletes the stream while a leader runs: its next save declares it again,
    so the state is not lost for the next leader."""
    clock = Clock()
    clock.now = T0 + timedelta(seconds=20)
    leader = lead(clock)
    assert leader.take_lead()
    assert leader.step() == 1  # saved once: the stream is declared on its connection
    with client(rabbit_broker.url) as foreign:
        foreign.channel.queue_delete(naming.scheduler_state(rabbit_broker.namespace))
    assert rabbit_broker.schedule_state() == {}
    clock.now = T0 + timedelta(seconds=30)
    assert leader.step() == 1
    assert rabbit_broker.schedule_state() == {ENTRY: T0 + timedelta(seconds=30)}
