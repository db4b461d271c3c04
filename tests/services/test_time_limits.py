"""Time limits: a handler past its `time_limit_s` is interrupted, retried, dead-lettered;
handlers within their limit are untouched; workers warn at start about missing limits."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest

from leveret.actors import Actor, Context, RetryPolicy, actor, fixed, handler
from leveret.schemas import Message, wire
from leveret.services import MemoryBroker
from leveret.services.broker import Broker
from leveret.services.runtime.timelimits import warn_about_limits
from leveret.services.testing import captured_logs, memory_broker
from tests.support import Recorder, WorkerProcess, running, wait_until

TIME_LIMIT_EXCEEDED = "leveret.schemas.errors.TimeLimitExceeded"


class Work(Message, topic="tests.time_limits.work"):
    n: int
    run_s: float


class Other(Message, topic="tests.time_limits.other"):
    n: int


runs = Recorder()
retried_for = Recorder()


def _busy(seconds: float) -> None:
    """Sleep in a Python loop: the interruption lands between two short sleeps."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


class Limited(Actor, queue="limited"):
    time_limit_s = 1
    retry = RetryPolicy(attempts=2, backoff=fixed(0))

    @handler
    def work(self, msg: Work, ctx: Context) -> None:
        started = time.monotonic()
        try:
            _busy(msg.run_s)
        finally:
            # Runs on interruption too: `finally` blocks unwind as for any exception.
            elapsed = time.monotonic() - started
            runs.add(("work", msg.n, ctx.attempt, threading.get_ident(), elapsed))
            retried_for.add(ctx.envelope.headers.get(wire.ERROR_TYPE))

    @handler(time_limit_s=30)
    def other(self, msg: Other) -> None:
        _busy(1.5)  # past the actor's 1 s, within this handler's own 30 s
        runs.add(("other", msg.n, 1, threading.get_ident(), 0.0))


@pytest.fixture(autouse=True)
def _fresh_runs() -> None:
    runs.items.clear()
    retried_for.items.clear()


def test_handler_past_its_limit_is_interrupted_retried_and_dead_lettered(broker: Broker) -> None:
    """A 1 s limit stops a 30 s handler after ~1 s, each attempt; the `.dlq` records
    TimeLimitExceeded; the same handler thread then serves later messages normally."""
    with running(broker, Limited, threads=1):
        broker.send(Limited, Work(n=1, run_s=30))
        for n in (2, 3):
            broker.send(Limited, Work(n=n, run_s=0.1))
        wait_until(lambda: len(broker.dead_letters(Limited)) == 1, 20, "the dead letter")
        items = runs.wait_for(4, 10)
    slow = [item for item in items if item[1] == 1]
    assert [attempt for _k, _n, attempt, _t, _d in slow] == [1, 2], "retried once, per policy"
    for _k, _n, _a, _thread, duration in slow:
        assert 0.9 <= duration < 3, f"interrupted after {duration:.2f}s, limit 1 s"
    threads = {thread for _k, _n, _a, thread, _d in items}
    assert len(threads) == 1, "one handler thread did it all: interrupting does not kill it"
    assert sorted(n for _k, n, _a, _t, _d in items if n != 1) == [2, 3]
    (letter,) = broker.dead_letters(Limited)
    assert letter.headers[wire.ERROR_TYPE] == TIME_LIMIT_EXCEEDED
    assert "time limit of 1 s" in letter.headers[wire.ERROR_MESSAGE]
    assert letter.headers[wire.ERROR_REASON] == "retries_exhausted"
    assert letter.headers[wire.ATTEMPT] == 2
    assert "_busy" in letter.headers[wire.ERROR_TRACEBACK], "shows where it was interrupted"
    assert TIME_LIMIT_EXCEEDED in retried_for.items, "the retry's headers record it too"


def test_handlers_within_their_limit_are_unaffected(broker: Broker) -> None:
    """Handlers finishing within their limit are handled once; a handler's own longer
    limit wins over the actor's."""
    with running(broker, Limited, threads=2):
        broker.send(Limited, Work(n=1, run_s=0.5))
        broker.send(Limited, Other(n=2))
        items = runs.wait_for(2, 15)
        time.sleep(0.2)  # nothing else may follow: no retry, no dead letter
    assert sorted((kind, n, attempt) for kind, n, attempt, _t, _d in runs.items) == [
        ("other", 2, 1),
        ("work", 1, 1),
    ], items
    assert broker.dead_letters(Limited) == []


@actor(queue="swallower", time_limit_s=0.5, retry=RetryPolicy(attempts=1))
def swallower(msg: Other) -> None:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the kind of handler this test is about
            time.sleep(0.01)


def test_a_handler_that_swallows_the_interruption_still_fails() -> None:
    """Catching every exception does not hide a time limit: the message still fails."""
    with memory_broker(swallower) as broker:
        swallower.send(Other(n=1))
        stats = broker.join(raise_errors=False)
        (letter,) = broker.dead_letters(swallower)
    assert stats.dead_lettered == 1
    assert letter.headers[wire.ERROR_TYPE] == TIME_LIMIT_EXCEEDED


class NoLimit(Actor, queue="no_limit"):
    @handler
    def on(self, msg: Other) -> None: ...


class TooLong(Actor, queue="too_long"):
    time_limit_s = 3600

    @handler
    def on(self, msg: Other) -> None: ...

    @handler(time_limit_s=60)
    def fine(self, msg: Work) -> None: ...


def test_start_up_warns_about_missing_and_too_long_limits() -> None:
    """One line names the handlers without a limit, one those not below consumer_timeout."""
    with captured_logs() as logs:
        warned = warn_about_limits([NoLimit, TooLong, Limited], consumer_timeout_s=1800)
    found = {e["event"]: e["handlers"] for e in logs}
    assert found == {"time_limit_missing": ["no_limit.on"], "time_limit_too_long": ["too_long.on"]}
    assert warned == 2
    with captured_logs() as logs:
        warn_about_limits([Limited], consumer_timeout_s=10)
    assert [(e["event"], e["handlers"]) for e in logs] == [
        ("time_limit_too_long", ["limited.other"])
    ]


def test_worker_command_logs_the_warning_at_start(namespace: str) -> None:
    """`leveret worker` warns in its JSON log, against its --consumer-timeout."""
    process = WorkerProcess(
        ["tests.sample_actors"],
        namespace,
        url="memory://",
        args=["--threads", "1", "--consumer-timeout", "900"],
    )
    try:
        process.wait_consuming()
        events = [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]
    finally:
        process.stop()
    (missing,) = [e for e in events if e["event"] == "time_limit_missing"]  # one line
    assert any(name.startswith("jobs.") for name in missing["handlers"])
    assert missing["level"] == "warning"
    assert missing["consumer_timeout_s"] == 900


def test_memory_join_interrupts_in_the_calling_thread() -> None:
    """`MemoryBroker.join` (unit tests) enforces limits too, in the test's own thread."""
    with memory_broker(Limited) as broker:
        assert isinstance(broker, MemoryBroker)
        broker.send(Limited, Work(n=1, run_s=10))
        started = time.monotonic()
        stats = broker.join(raise_errors=False)
    assert time.monotonic() - started < 5
    assert stats.retried == 1
    assert stats.dead_lettered == 1


class Tight(Message, topic="tests.time_limits.tight"):
    n: int


class AtTheLimit(Actor, queue="at_the_limit"):
    """Handlers that return within a millisecond of their 5 ms limit, either side of it."""

    time_limit_s = 0.005
    retry = RetryPolicy(attempts=1)

    @handler
    def work(self, msg: Tight) -> None:
        deadline = time.monotonic() + 0.004 + (msg.n % 20) / 10_000
        while time.monotonic() < deadline:
            time.sleep(0.0002)


def test_limits_firing_as_handlers_return_never_leak_or_hang() -> None:
    """2,000 handlers ending right at their limit on 4 threads: each is handled or fails
    with TimeLimitExceeded, no interruption surfaces in the worker's own code (a lock it
    held would leak and hang every later handler), and limits still work afterwards."""
    count = 2000
    broker = MemoryBroker(namespace="limits-race")
    broker.declare(AtTheLimit, Limited)
    for n in range(count):
        broker.send(AtTheLimit, Tight(n=n))
    worker = broker.worker([AtTheLimit, Limited], threads=4)
    worker.start()
    try:
        stats = worker.stats
        wait_until(lambda: stats.handled + stats.dead_lettered >= count, 60, "every handler to end")
        assert worker.threads_alive()
        assert stats.handled + stats.dead_lettered == count
        reasons = {d.headers[wire.ERROR_TYPE] for d in broker.dead_letters(AtTheLimit, limit=count)}
        assert reasons <= {TIME_LIMIT_EXCEEDED}, reasons
        # The monitor still interrupts a handler past its limit, and spares one within it.
        runs.items.clear()
        broker.send(Limited, Work(n=1, run_s=3))
        broker.send(Limited, Work(n=2, run_s=0))
        wait_until(lambda: len(runs) >= 3, 10, "the two works")
        by_n = {item[1]: item for item in runs.items}
        assert by_n[1][4] < 2.0  # interrupted at about 1 s
        assert by_n[2][4] < 0.5
    finally:
        assert worker.shutdown(10) == 0
