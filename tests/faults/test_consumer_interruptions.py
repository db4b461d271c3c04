"""The broker interrupts a consumer: its queue is deleted (consumer cancel), or a delivery
stays unacked past `consumer_timeout` (the broker closes the channel with 406; RabbitMQ 4.3+
cancels the consumer instead). The worker comes back by itself, nothing is lost, and health
says so meanwhile."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from leveret.actors import Actor, Context, handler
from leveret.schemas import Message
from leveret.services import RabbitBroker
from leveret.services.operations.health import WorkerProbe
from leveret.services.testing import captured_logs
from leveret.services.topology import naming
from tests.support import RABBITMQCTL, Recorder, running, wait_until

pytestmark = [pytest.mark.fault]


class Nap(Message, topic="tests.interruptions.nap"):
    n: int
    first_run_s: float = 0.0


class Napper(Actor, queue="napper"):
    """Sleeps `first_run_s` on a first delivery only; records (n, redelivered) of each run."""

    runs = Recorder()

    @handler
    def on(self, msg: Nap, ctx: Context) -> None:
        Napper.runs.add((msg.n, ctx.envelope.redelivered))
        if not ctx.envelope.redelivered:
            time.sleep(msg.first_run_s)


def test_a_deleted_queue_is_declared_again_and_consumed(rabbit_broker: RabbitBroker) -> None:
    """The broker cancels the consumer when its queue is deleted: the worker declares it
    again and consumes; health is unhealthy only meanwhile."""
    Napper.runs = Recorder()
    queue = naming.queue_name(rabbit_broker.namespace, Napper.queue)
    with (
        captured_logs() as logs,
        running(rabbit_broker, Napper, threads=2) as worker,
    ):
        probe = WorkerProbe(worker, [queue])
        Napper.send(Nap(n=1))
        Napper.runs.wait_for(1)
        with rabbit_broker.admin() as channel:
            channel.queue_delete(queue)
        wait_until(lambda: not probe.check().healthy, 5, "health to turn red")
        wait_until(lambda: probe.check().healthy, 15, "the worker to consume again")
        Napper.send(Nap(n=2))
        assert [item[0] for item in Napper.runs.wait_for(2)] == [1, 2]
    events = [event["event"] for event in logs]
    assert "worker_consumer_cancelled" in events
    assert "worker_consumer_resumed" in events


@pytest.fixture
def consumer_timeout_2s() -> Iterator[None]:
    """The broker's consumer_timeout at 2 s (checked every 0.5 s) for channels opened now."""
    _set_env(consumer_timeout=2000, channel_tick_interval=500)
    try:
        yield
    finally:
        _set_env(consumer_timeout=1_800_000, channel_tick_interval=60_000)


def _set_env(**values: int) -> None:
    expression = ", ".join(
        f"application:set_env(rabbit, {key}, {value})" for key, value in values.items()
    )
    subprocess.run(
        [*RABBITMQCTL, "eval", f"{expression}."], check=True, capture_output=True, timeout=60
    )


_TIMED_OUT = ("worker_channel_lost", "worker_consumer_cancelled")


def test_consumer_timeout_closing_the_channel_loses_nothing(
    rabbit_broker: RabbitBroker, consumer_timeout_2s: None
) -> None:
    """A handler runs 4 s under a 2 s consumer_timeout: the broker closes the channel (406)
    with work in flight, or (RabbitMQ 4.3+, quorum queues) cancels the consumer and takes
    its deliveries back; the worker opens a new channel or consumes again, and every message
    is handled (those in flight at the timeout again: at-least-once)."""
    Napper.runs = Recorder()
    with (
        captured_logs() as logs,
        running(rabbit_broker, Napper, threads=2, prefetch=4) as worker,
    ):
        Napper.send(Nap(n=1, first_run_s=4))
        for n in range(2, 6):
            Napper.send(Nap(n=n))
        wait_until(
            lambda: any(e["event"] in _TIMED_OUT for e in logs),
            15,
            "the broker to end the timed-out consumer",
        )
        _set_env(consumer_timeout=1_800_000, channel_tick_interval=60_000)
        wait_until(lambda: {item[0] for item in Napper.runs.items} == {1, 2, 3, 4, 5}, 20, "all")
        wait_until(lambda: worker.consuming.is_set(), 10, "consuming again")
        queue = naming.queue_name(rabbit_broker.namespace, Napper.queue)
        wait_until(lambda: rabbit_broker.message_count(queue) == 0, 10, "an empty queue")
    ended = next(e for e in logs if e["event"] in _TIMED_OUT)
    if ended["event"] == "worker_channel_lost":  # RabbitMQ before 4.3
        assert "406" in ended["error"], ended
        assert "timed out" in ended["error"], ended
    else:
        assert any(e["event"] == "worker_consumer_resumed" for e in logs)
    assert (1, True) in Napper.runs.items  # the timed-out message came back
