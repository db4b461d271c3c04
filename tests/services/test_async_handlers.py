"""``async def`` handlers: the contract on the in-memory broker and on the real RabbitMQ.

Handlers and `@actor` functions, beside sync ones in the same worker and the same actor;
`AsyncContext` (awaited publish and send); concurrency; time limits by cancellation;
retries; dead letters; shutdown letting tasks in flight finish; `MemoryBroker.join`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from leveret.actors import (
    NO_RETRY,
    Actor,
    AsyncContext,
    Context,
    Reject,
    RetryPolicy,
    actor,
    configure,
    fixed,
    handler,
    publish,
)
from leveret.schemas import DefinitionError, InvalidArgument, Message, PublishError, wire
from leveret.services import MemoryBroker
from leveret.services.broker import Broker
from leveret.services.operations.health import HealthServer, WorkerProbe
from leveret.services.testing import captured_logs
from tests.support import Recorder, get_health, running, wait_health, wait_until


class Fetch(Message, topic="tests.async.fetch"):
    key: str
    wait_s: float = 0.0


class Fetched(Message, topic="tests.async.fetched"):
    key: str


class Count(Message, topic="tests.async.count"):
    n: int


class Unsteady(Message, topic="tests.async.unsteady"):
    key: str


seen = Recorder()


@pytest.fixture(autouse=True)
def _fresh() -> None:
    seen.items.clear()
    Gauge.reset()


class Gauge:
    """How many handlers run at once (only touched from one event loop's thread)."""

    now = 0
    most = 0
    lock = threading.Lock()

    @classmethod
    def reset(cls) -> None:
        cls.now = cls.most = 0


class Fetcher(Actor, queue="fetcher"):
    retry = NO_RETRY

    @handler
    async def fetch(self, msg: Fetch, ctx: AsyncContext) -> None:
        with Gauge.lock:
            Gauge.now += 1
            Gauge.most = max(Gauge.most, Gauge.now)
        try:
            await asyncio.sleep(msg.wait_s)
        finally:
            with Gauge.lock:
                Gauge.now -= 1
        if msg.key == "boom":
            raise ValueError("fetch exploded")
        if msg.key == "reject":
            raise Reject("key is blocked")
        seen.add(("fetch", msg.key, ctx.correlation_id, threading.current_thread().name))
        await ctx.publish(Fetched(key=msg.key))

    @handler
    def count(self, msg: Count, ctx: Context) -> None:  # a sync handler of the same actor
        seen.add(("count", msg.n, threading.current_thread().name))


@actor(queue="fetched_log")
async def fetched_log(msg: Fetched, ctx: AsyncContext) -> None:
    seen.add(("fetched", msg.key, ctx.correlation_id))


class Slow(Actor, queue="slow_async"):
    retry = NO_RETRY
    time_limit_s = 0.3

    @handler
    async def fetch(self, msg: Fetch) -> None:
        if msg.key == "stubborn":  # swallows its cancellation and goes on
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                await asyncio.sleep(0.01)
            seen.add(("stubborn returned", msg.key))
            return
        await asyncio.sleep(30)


class Flaky(Actor, queue="flaky_async"):
    retry = RetryPolicy(attempts=3, backoff=fixed(0))

    @handler
    async def fetch(self, msg: Unsteady, ctx: AsyncContext) -> None:
        await asyncio.sleep(0)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        seen.add(("flaky", msg.key, ctx.attempt))


def test_async_and_sync_handlers_run_in_one_worker_and_publish_with_await(
    broker: Broker,
) -> None:
    with running(broker, Fetcher, fetched_log, threads=2, concurrency=10):
        publish(Fetch(key="a"))
        publish(Count(n=7))
        items = seen.wait_for(3, timeout_s=15)
    by_kind = {item[0]: item for item in items}
    assert by_kind["fetch"][1] == "a"
    assert by_kind["fetch"][3] == "leveret-event-loop"  # the loop's thread
    assert by_kind["count"][1:] == (7, by_kind["count"][2])
    assert by_kind["count"][2].startswith("leveret-handler-")  # a handler thread
    # The message the async handler published carries its correlation id on.
    assert by_kind["fetched"][1] == "a"
    assert by_kind["fetched"][2] == by_kind["fetch"][2] is not None


def test_concurrency_bounds_the_async_handlers_running_at_once(broker: Broker) -> None:
    with running(broker, Fetcher, fetched_log, threads=1, concurrency=4) as worker:
        for number in range(12):
            publish(Fetch(key=f"k{number}", wait_s=0.2))
        seen.wait_for(24, timeout_s=20)  # 12 fetched and 12 logged
    assert Gauge.most == 4, f"{Gauge.most} ran at once with concurrency 4"
    assert worker.stats.handled == 24


def test_async_failures_retry_then_dead_letter_reject_at_once(broker: Broker) -> None:
    with running(broker, Fetcher, fetched_log, Flaky, concurrency=5):
        publish(Fetch(key="boom"))
        publish(Fetch(key="reject"))
        Flaky.send(Unsteady(key="third time lucky"))
        assert seen.wait_for(1, timeout_s=15) == [("flaky", "third time lucky", 3)]
        letters: list[Any] = []

        def two_letters() -> bool:
            letters[:] = broker.dead_letters(Fetcher)
            return len(letters) >= 2

        wait_until(two_letters, 15, "two dead letters")
    by_reason = {letter.headers[wire.ERROR_REASON]: letter for letter in letters}
    assert set(by_reason) == {"handler_error", "rejected"}
    failed = by_reason["handler_error"].headers
    assert failed[wire.ERROR_TYPE] == "builtins.ValueError"
    assert "fetch exploded" in failed[wire.ERROR_TRACEBACK]
    assert wire.ERROR_TRACEBACK not in by_reason["rejected"].headers


def test_time_limit_cancels_an_async_handler(broker: Broker) -> None:
    with running(broker, Slow, concurrency=5) as worker:
        Slow.send(Fetch(key="sleeper"))
        Slow.send(Fetch(key="stubborn"))
        letters: list[Any] = []

        def two_letters() -> bool:
            letters[:] = broker.dead_letters(Slow)
            return len(letters) >= 2

        wait_until(two_letters, 15, "two dead letters")
        assert worker.stats.handled == 0
    for letter in letters:
        assert letter.headers[wire.ERROR_TYPE] == "leveret.schemas.errors.TimeLimitExceeded"
        assert "time limit of 0.3 s" in letter.headers[wire.ERROR_MESSAGE]
    # The stubborn handler went on after its cancellation: still too late, still failed.
    assert seen.items == [("stubborn returned", "stubborn")]


def test_shutdown_lets_async_handlers_in_flight_finish(broker: Broker) -> None:
    with running(broker, Fetcher, fetched_log, concurrency=10) as worker:
        for number in range(5):
            publish(Fetch(key=f"slow{number}", wait_s=0.5))
        wait_until(lambda: Gauge.now == 5, 15, "five handlers running")
        exit_code = worker.shutdown(15)
    assert exit_code == 0
    fetched = [item for item in seen.items if item[0] == "fetch"]
    assert len(fetched) == 5  # every one finished (and was acked), none cut off
    assert worker.stats.handled == 5
    # What they published after shutdown began was confirmed: the log actor gets it all.
    with running(broker, fetched_log, concurrency=10):
        seen.wait_for(10, timeout_s=15)


def test_memory_join_runs_async_handlers_also_inside_a_running_loop() -> None:
    broker = MemoryBroker(namespace="join-async")
    with broker:
        configure(broker)
        try:
            broker.declare(Fetcher, fetched_log, Flaky)
            publish(Fetch(key="x"))
            Flaky.send(Unsteady(key="y"))
            broker.join()
            assert sorted(item[:2] for item in seen.items) == [
                ("fetch", "x"),
                ("fetched", "x"),
                ("flaky", "y"),
            ]

            async def from_async_code() -> None:
                await Fetcher.send_async(Fetch(key="z"))
                broker.join()  # an async test calling join: the loop here is busy

            asyncio.run(from_async_code())
            assert ("fetched", "z") in [item[:2] for item in seen.items]
        finally:
            configure(None)


def test_async_handler_signatures_are_checked() -> None:
    with pytest.raises(DefinitionError, match="must be hinted AsyncContext"):

        class WrongContext(Actor):
            @handler
            async def fetch(self, msg: Fetch, ctx: Context) -> None: ...

    with pytest.raises(DefinitionError, match="must be hinted Context"):

        class WrongSyncContext(Actor):
            @handler
            def fetch(self, msg: Fetch, ctx: AsyncContext) -> None: ...

    with pytest.raises(Exception, match="concurrency"):
        MemoryBroker(namespace="x").worker([Fetcher], concurrency=0)


def test_awaited_send_and_publish_confirm_or_raise(broker: Broker) -> None:
    async def scenario() -> tuple[str, str]:
        sent = await broker.send_async(Fetcher, Count(n=1))  # declares on first use
        published = await broker.publish_async(Fetch(key="nobody handles it yet"))
        broker.delete(Fetcher)
        broker._declared.add(Fetcher)  # the broker believes it is declared
        with pytest.raises(PublishError, match="no queue"):
            await broker.send_async(Fetcher, Count(n=2))
        with pytest.raises(InvalidArgument):
            await broker.send_async(Fetcher, Count(n=3), delay=-1)
        return sent, published

    sent, published = asyncio.run(scenario())
    assert len(sent) == len(published) == 32


class Blocker(Actor, queue="blocker"):
    retry = NO_RETRY

    @handler
    async def fetch(self, msg: Fetch) -> None:
        time.sleep(msg.wait_s)  # blocks the event loop: what the watcher reports


def test_a_handler_blocking_the_event_loop_is_reported_with_its_stack(broker: Broker) -> None:
    with captured_logs("warning") as logs, running(broker, Blocker, concurrency=5) as worker:
        assert worker.event_loop is not None
        worker.event_loop.blocked_after_s = 0.3
        Blocker.send(Fetch(key="b", wait_s=1.2))
        wait_until(lambda: worker.stats.handled == 1, 15, "the blocking handler")
    blocked = [event for event in logs if event["event"] == "event_loop_blocked"]
    assert len(blocked) == 1, blocked  # once per stall
    assert "time.sleep(msg.wait_s)" in blocked[0]["where"]
    assert blocked[0]["stalled_s"] > 0.3


def test_a_handler_blocking_the_event_loop_past_the_bound_turns_health_red(broker: Broker) -> None:
    """An async handler that blocks the loop (time.sleep) longer than `unhealthy_after_s`
    makes the worker's health 503, saying why, until the loop turns again (200)."""
    with running(broker, Blocker, concurrency=5) as worker:
        loop = worker.event_loop
        assert loop is not None
        loop.unhealthy_after_s = 0.5
        server = HealthServer(WorkerProbe(worker, ["blocker"]), port=0)
        server.start()
        try:
            assert get_health(server.port)[0] == 200
            with captured_logs("error") as logs:
                Blocker.send(Fetch(key="b", wait_s=3.0))
                body = wait_health(server.port, 503, timeout_s=10)
                assert "event loop has not turned" in body["error"], body
                wait_until(lambda: worker.stats.handled == 1, 15, "the blocking handler")
                wait_health(server.port, 200, timeout_s=10)
            stuck = [event for event in logs if event["event"] == "event_loop_stuck"]
            assert len(stuck) == 1, logs
            assert "time.sleep(msg.wait_s)" in stuck[0]["where"]
        finally:
            server.close()
