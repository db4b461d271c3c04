"""Retries with backoff, Retry/Reject, delayed delivery: on the in-memory broker (virtual
clock, no sleeping) and on the real RabbitMQ (delay levels, real time)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from leveret.actors import (
    Actor,
    Context,
    Reject,
    Retry,
    RetryPolicy,
    actor,
    fixed,
    handler,
    publish,
)
from leveret.schemas import Message, wire
from leveret.services import RabbitBroker
from leveret.services.testing import memory_broker
from leveret.services.topology import delays, naming
from tests.support import Recorder, running, wait_until


class Flaky(Message, topic="tests.retry.flaky"):
    key: str
    fail_times: int = 0
    always: bool = False
    reject: bool = False
    retry_in_s: float | None = None
    not_retryable: bool = False


class Tick(Message, topic="tests.retry.tick"):
    n: int


calls = Recorder()
clock: Callable[[], float] = time.time


class Retrier(Actor, queue="retrier"):
    retry = RetryPolicy(attempts=4, backoff=fixed(1), dead_letter_on=(KeyError,))

    @handler
    def on(self, msg: Flaky, ctx: Context) -> None:
        calls.add((msg.key, ctx.attempt, clock(), ctx.message_id))
        if msg.reject:
            raise Reject("rejected on purpose")
        if msg.not_retryable:
            raise KeyError("no such thing")
        if msg.always or ctx.attempt <= msg.fail_times:
            if msg.retry_in_s is not None:
                raise Retry("asked for later", delay=msg.retry_in_s)
            raise ConnectionError(f"flaky attempt {ctx.attempt}")


class Clock(Actor, queue="clock"):
    @handler
    def on(self, msg: Tick) -> None:
        calls.add(("tick", msg.n, clock()))


@actor(queue="clock_copy")
def clock_copy(msg: Tick) -> None:
    calls.add(("copy", msg.n, clock()))


@pytest.fixture(autouse=True)
def _fresh() -> None:
    calls.items.clear()


def _use_clock(now: Callable[[], float]) -> None:
    global clock
    clock = now


# In memory: virtual time, nothing sleeps -----------------------------------------------


def test_memory_failing_twice_then_succeeding_is_handled_three_times() -> None:
    with memory_broker(Retrier) as broker:
        _use_clock(broker.clock.now)
        message_id = Retrier.send(Flaky(key="a", fail_times=2))
        stats = broker.join()
    assert [(c[1], c[3]) for c in calls.items] == [
        (1, message_id),
        (2, message_id),
        (3, message_id),
    ]
    times = [c[2] for c in calls.items]
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [1.0, 1.0]
    assert (stats.handled, stats.retried, stats.dead_lettered) == (1, 2, 0)


def test_memory_always_failing_is_dead_lettered_after_exactly_n_attempts() -> None:
    with memory_broker(Retrier) as broker:
        _use_clock(broker.clock.now)
        Retrier.send(Flaky(key="b", always=True))
        with pytest.raises(ConnectionError, match="flaky attempt 4"):
            broker.join()
        (letter,) = broker.dead_letters(Retrier)
    assert [c[1] for c in calls.items] == [1, 2, 3, 4]
    headers = letter.headers
    assert headers[wire.ATTEMPT] == 4
    assert headers[wire.ERROR_REASON] == "retries_exhausted"
    assert headers[wire.ERROR_TYPE] == "builtins.ConnectionError"
    assert headers[wire.ERROR_MESSAGE] == "flaky attempt 4"
    assert "ConnectionError" in headers[wire.ERROR_TRACEBACK]
    assert headers[wire.FIRST_FAILED_AT] <= headers[wire.FAILED_AT]
    assert headers[wire.FAILED_HOST]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (Flaky(key="r", reject=True), "rejected"),
        (Flaky(key="k", not_retryable=True), "handler_error"),
    ],
)
def test_memory_reject_and_non_retryable_errors_skip_retries(message: Flaky, reason: str) -> None:
    with memory_broker(Retrier) as broker:
        Retrier.send(message)
        broker.join(raise_errors=False)
        (letter,) = broker.dead_letters(Retrier)
    assert len(calls) == 1
    assert letter.headers[wire.ERROR_REASON] == reason


def test_memory_validation_error_skips_retries() -> None:
    with memory_broker(Retrier) as broker:
        from leveret.services.delivery import Delivery

        with broker.changed:
            broker.queues[naming.queue_name(broker.namespace, "retrier")].append(
                Delivery(b'{"key": 1}', "tests.retry.flaky", "bad-1", None, None, {})
            )
        broker.join(raise_errors=False)
        (letter,) = broker.dead_letters(Retrier)
    assert len(calls) == 0
    assert letter.headers[wire.ERROR_REASON] == "invalid_message"


def test_memory_retry_exception_asks_for_its_own_delay() -> None:
    with memory_broker(Retrier) as broker:
        _use_clock(broker.clock.now)
        Retrier.send(Flaky(key="d", fail_times=1, retry_in_s=7))
        broker.join()
    first, second = (c[2] for c in calls.items)
    assert second - first == pytest.approx(7)


def test_memory_delayed_send_waits_on_the_virtual_clock() -> None:
    with memory_broker(Clock, clock_copy) as broker:
        _use_clock(broker.clock.now)
        start = broker.clock.now()
        Clock.send(Tick(n=1), delay=timedelta(seconds=5))
        publish(Tick(n=2), delay=3)
        broker.join(advance_clock=False)
        assert len(calls) == 0
        assert broker.delayed() == 2
        broker.advance_clock(3)
        broker.join(advance_clock=False)
        assert sorted(c[:2] for c in calls.items) == [("copy", 2), ("tick", 2)]
        broker.advance_clock(2)
        broker.join(advance_clock=False)
    assert [c[:2] for c in calls.items][-1] == ("tick", 1)
    assert calls.items[-1][2] - start == pytest.approx(5)


def test_invalid_delays_are_refused_before_publishing() -> None:
    with memory_broker(Clock):
        with pytest.raises(ValueError, match="longer than the maximum"):
            Clock.send(Tick(n=1), delay=2**28)
        with pytest.raises(ValueError, match="zero or positive"):
            Clock.send(Tick(n=1), delay=-1)


# On RabbitMQ: real time through the delay levels -----------------------------------------


def _prepare(rabbit_broker: RabbitBroker, *actors: Any) -> None:
    _use_clock(time.time)
    rabbit_broker.declare(*actors)


def test_rabbit_failing_twice_then_succeeding_with_observed_backoff(
    rabbit_broker: RabbitBroker,
) -> None:
    _prepare(rabbit_broker, Retrier)
    with running(rabbit_broker, Retrier, threads=2) as worker:
        message_id = Retrier.send(Flaky(key="a", fail_times=2))
        items = calls.wait_for(3, timeout_s=20)
        wait_until(lambda: worker.stats.handled == 1, 10, "the third attempt to be acked")
        # No fourth attempt is on its way: nothing waits in the delay levels or the queue.
        assert (worker.stats.retried, worker.stats.dead_lettered) == (2, 0)
        assert _waiting_anywhere(rabbit_broker) == 0
    assert [(c[1], c[3]) for c in calls.items] == [
        (1, message_id),
        (2, message_id),
        (3, message_id),
    ]
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(items)]
    assert all(1.0 <= gap < 2.5 for gap in gaps), gaps


def _waiting_anywhere(broker: RabbitBroker) -> int:
    """Messages ready in the retrier's queue and in every delay level of the namespace."""
    queues = [naming.queue_name(broker.namespace, Retrier.queue)]
    queues += [naming.delay_queue(broker.namespace, level) for level in range(delays.LEVELS)]
    return sum(broker.message_count(queue) for queue in queues)


def test_rabbit_always_failing_ends_in_dlq_after_exactly_n_attempts(
    rabbit_broker: RabbitBroker,
) -> None:
    _prepare(rabbit_broker, Retrier)
    with running(rabbit_broker, Retrier, threads=2):
        message_id = Retrier.send(Flaky(key="b", always=True))
        wait_until(lambda: len(rabbit_broker.dead_letters(Retrier)) == 1, 30, "the dead letter")
        (letter,) = rabbit_broker.dead_letters(Retrier)
    assert [c[1] for c in calls.items] == [1, 2, 3, 4]
    assert letter.message_id == message_id
    assert letter.headers[wire.ATTEMPT] == 4
    assert letter.headers[wire.ERROR_REASON] == "retries_exhausted"
    assert letter.headers[wire.ERROR_TYPE] == "builtins.ConnectionError"
    assert "x-death" not in letter.headers  # the trips through the delay levels are not kept
    assert rabbit_broker.message_count(naming.queue_name(rabbit_broker.namespace, "retrier")) == 0


def test_rabbit_reject_skips_retries(rabbit_broker: RabbitBroker) -> None:
    _prepare(rabbit_broker, Retrier)
    with running(rabbit_broker, Retrier, threads=2):
        Retrier.send(Flaky(key="r", reject=True))
        wait_until(lambda: len(rabbit_broker.dead_letters(Retrier)) == 1, 15, "the dead letter")
    assert len(calls) == 1


def test_rabbit_delayed_message_arrives_no_earlier_and_within_1_5_s(
    rabbit_broker: RabbitBroker,
) -> None:
    _prepare(rabbit_broker, Clock)
    with running(rabbit_broker, Clock, threads=2):
        sent = time.time()
        Clock.send(Tick(n=1), delay=2)
        ((_, _, arrived),) = calls.wait_for(1, timeout_s=10)
    assert 2.0 <= arrived - sent < 3.5


def test_rabbit_delays_sent_together_arrive_in_delay_order(rabbit_broker: RabbitBroker) -> None:
    _prepare(rabbit_broker, Clock)
    with running(rabbit_broker, Clock, threads=2):
        sent = time.time()
        for n in (1, 5, 3):
            Clock.send(Tick(n=n), delay=n)
        items = calls.wait_for(3, timeout_s=15)
    assert [c[1] for c in items] == [1, 3, 5]
    for _, n, arrived in items:
        assert n <= arrived - sent < n + 1.5


def test_rabbit_delayed_publish_fans_out_by_topic_on_arrival(rabbit_broker: RabbitBroker) -> None:
    _prepare(rabbit_broker, Clock, clock_copy)
    with running(rabbit_broker, Clock, clock_copy, threads=2):
        publish(Tick(n=7), delay=1)
        items = calls.wait_for(2, timeout_s=10)
    assert sorted(c[:2] for c in items) == [("copy", 7), ("tick", 7)]


def test_rabbit_validation_error_skips_retries(rabbit_broker: RabbitBroker) -> None:
    from tests.services.test_contract import inject_raw

    _prepare(rabbit_broker, Retrier)
    with running(rabbit_broker, Retrier, threads=2):
        inject_raw(rabbit_broker, "retrier", b'{"key": 1}', Flaky.topic())
        wait_until(lambda: len(rabbit_broker.dead_letters(Retrier)) == 1, 15, "the dead letter")
        (letter,) = rabbit_broker.dead_letters(Retrier)
    assert len(calls) == 0
    assert letter.headers[wire.ERROR_REASON] == "invalid_message"
    assert letter.headers[wire.ATTEMPT] == 1


# Retry delays Leveret cannot honour ------------------------------------------------------


class BadRetry(Message, topic="tests.retry.bad"):
    case: str


BAD_DELAYS: dict[str, object] = {
    "ten_years": timedelta(days=3650),
    "negative": -1,
    "nan": float("nan"),
    "inf": float("inf"),
    "text": "5",
}


class BadRetries(Actor, queue="bad_retries"):
    @handler
    def on(self, msg: BadRetry) -> None:
        raise Retry("later", delay=BAD_DELAYS[msg.case])  # type: ignore[arg-type]


class NanBackoff(Actor, queue="nan_backoff"):
    retry = RetryPolicy(attempts=3, backoff=lambda _attempt: float("nan"))

    @handler
    def on(self, msg: BadRetry) -> None:
        raise ConnectionError("the backoff decides")


def _raising_backoff(_attempt: int) -> float:
    raise ZeroDivisionError("a backoff with a bug")


class RaisingBackoff(Actor, queue="raising_backoff"):
    retry = RetryPolicy(attempts=3, backoff=_raising_backoff)

    @handler
    def on(self, msg: BadRetry) -> None:
        raise ConnectionError("the backoff decides")


@pytest.mark.parametrize("case", sorted(BAD_DELAYS))
def test_memory_a_retry_delay_out_of_range_dead_letters_with_invalid_retry(case: str) -> None:
    """`Retry(delay=...)` of 10 years, -1, NaN, inf or text: dead-lettered at once with
    reason invalid_retry and a message that says why; the handler's error is the cause."""
    with memory_broker(BadRetries) as broker:
        BadRetries.send(BadRetry(case=case))
        broker.join(raise_errors=False)
        (letter,) = broker.dead_letters(BadRetries)
    headers = letter.headers
    assert headers[wire.ERROR_REASON] == "invalid_retry"
    assert headers[wire.ERROR_TYPE] == "leveret.schemas.errors.InvalidRetry"
    assert "retry delay" in headers[wire.ERROR_MESSAGE]
    assert "Retry: later" in headers[wire.ERROR_TRACEBACK]  # the cause is kept


@pytest.mark.parametrize(("cls", "says"), [(NanBackoff, "nan"), (RaisingBackoff, "ZeroDivision")])
def test_memory_a_backoff_giving_nan_or_raising_dead_letters_with_invalid_retry(
    cls: type[Actor], says: str
) -> None:
    with memory_broker(cls) as broker:
        cls.send(BadRetry(case="backoff"))
        broker.join(raise_errors=False)
        (letter,) = broker.dead_letters(cls)
    assert letter.headers[wire.ERROR_REASON] == "invalid_retry"
    assert says in letter.headers[wire.ERROR_MESSAGE]


def test_rabbit_a_ten_year_retry_is_dead_lettered_and_the_worker_goes_on(
    rabbit_broker: RabbitBroker,
) -> None:
    """Once, this raised on the worker's I/O thread and the process exited 0 in a loop."""
    _prepare(rabbit_broker, BadRetries, Clock)
    with running(rabbit_broker, BadRetries, Clock, threads=2) as worker:
        BadRetries.send(BadRetry(case="ten_years"))
        wait_until(lambda: rabbit_broker.dead_letter_count(BadRetries) == 1, 15, "dead letter")
        Clock.send(Tick(n=1))
        calls.wait_for(1)
        assert worker.threads_alive()
    (letter,) = rabbit_broker.dead_letters(BadRetries)
    assert letter.headers[wire.ERROR_REASON] == "invalid_retry"
    assert "outside 0" in letter.headers[wire.ERROR_MESSAGE]
