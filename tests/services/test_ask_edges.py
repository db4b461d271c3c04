"""Edges of asking found by a hostile review: nested asks in one thread, clocks, deadlines
no ask may have, timeouts bounded where they are passed, ask_all's silent actors and errors,
after_ask on every path."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from leveret.actors import NO_RETRY, Actor, Context, handler
from leveret.actors.control import Reject
from leveret.actors.dispatch import configure
from leveret.schemas import Message, wire
from leveret.schemas.envelope import Envelope
from leveret.schemas.errors import (
    AskTimeout,
    BrokerUnavailable,
    InvalidArgument,
    PublishError,
    RemoteError,
)
from leveret.services import RabbitBroker
from leveret.services.memory.clock import VirtualClock
from leveret.services.middleware import Middleware
from leveret.services.publishing import PublishOptions, outgoing
from leveret.services.testing import MemoryBroker, captured_logs
from tests.support import running


@pytest.fixture(autouse=True)
def _nothing_configured_after() -> Any:
    """`ctx.ask` asks through the process's broker: each test configures its own."""
    yield
    configure(None)


class Asked(Message, topic="tests.ask_edges.asked"):
    n: int = 0
    blob: str = ""


class Answered(Message, topic="tests.ask_edges.answered"):
    n: int


class Inner(Actor, queue="edges_inner"):
    retry = NO_RETRY

    @handler
    def answer(self, msg: Asked) -> Answered:
        if msg.n < 0:
            time.sleep(0.3)  # slower than its caller has
        return Answered(n=msg.n + 1)


class OuterAsked(Message, topic="tests.ask_edges.outer_asked"):
    n: int


class Outer(Actor, queue="edges_outer"):
    retry = NO_RETRY

    @handler
    def relay(self, msg: OuterAsked, ctx: Context) -> Answered:
        inner: Answered = ctx.ask(Inner, Asked(n=msg.n))  # no timeout: the rest of its own
        return Answered(n=inner.n * 10)


class Census(Message, topic="tests.ask_edges.census"):
    pass


class Count(Message, topic="tests.ask_edges.count"):
    shard: str


class CountA(Actor, queue="edges_count_a"):
    @handler
    def count(self, msg: Census) -> Count:
        return Count(shard="a")


class CountB(Actor, queue="edges_count_b"):
    retry = NO_RETRY

    @handler
    def count(self, msg: Census) -> Count:
        raise Reject("shard b is read-only")


class Auditor(Actor, queue="edges_auditor"):
    """Bound to the topic, answers nothing: silent to ask_all."""

    @handler
    def audit(self, msg: Census) -> None:
        return None


def test_a_handler_asks_in_eager_mode_and_is_answered_in_the_same_thread() -> None:
    broker = MemoryBroker(eager=True)
    broker.declare(Inner, Outer)
    configure(broker)
    started = time.monotonic()
    assert broker.ask(Outer, OuterAsked(n=4), timeout=5) == Answered(n=50)
    assert time.monotonic() - started < 2


def test_a_handler_asks_under_join_and_is_answered_in_the_same_thread() -> None:
    broker = MemoryBroker()
    broker.declare(Inner, Outer)
    configure(broker)
    answers: list[Any] = []
    asker = threading.Thread(
        target=lambda: answers.append(broker.ask(Outer, OuterAsked(n=1), timeout=10))
    )
    asker.start()
    deadline = time.monotonic() + 5
    while not answers and time.monotonic() < deadline:
        broker.join()
        time.sleep(0.01)
    asker.join(5)
    assert answers == [Answered(n=20)]


@pytest.mark.parametrize("start_s", [1.6e9, None])
def test_nested_asks_read_the_deadline_on_the_workers_clock(start_s: float | None) -> None:
    """The in-memory broker's virtual clock far from real time (2020, or an hour ahead):
    a nested ask gets the rest of its caller's deadline, read on that clock."""
    broker = MemoryBroker(clock=VirtualClock(start_s=start_s))
    if start_s is None:
        broker.advance_clock(3600)
    broker.declare(Inner, Outer)
    configure(broker)
    with running(broker, Inner, Outer, threads=4):
        assert broker.ask(Outer, OuterAsked(n=2), timeout=5) == Answered(n=30)


def test_a_nested_ask_that_times_out_leaves_its_caller_expired_not_dead_lettered() -> None:
    """The inner actor is slower than the outer ask's deadline: the outer handler's nested
    ask times out at that deadline, and the outer request is acked as expired (not retried,
    not dead-lettered): nobody waits for it."""
    broker = MemoryBroker()
    broker.declare(Inner, Outer)
    configure(broker)
    with captured_logs() as logs, running(broker, Inner, Outer, threads=4) as worker:
        for _ in range(3):
            with pytest.raises(AskTimeout):
                broker.ask(Outer, OuterAsked(n=-1), timeout=0.2)
        deadline = time.monotonic() + 5
        while worker.stats.handled < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert broker.dead_letter_count(Outer) == 0
    assert worker.stats.dead_lettered == 0
    assert (
        len([e for e in logs if e["event"] == "ask_expired" and e["actor"] == "edges_outer"]) == 3
    )


def test_a_deadline_no_ask_may_have_is_no_deadline() -> None:
    """Any client may send a deadline centuries ahead: the handler runs as without one,
    and the time-limit monitor never sees a wait it cannot make."""
    broker = MemoryBroker()
    broker.declare(Inner)
    item = outgoing(
        [Asked(n=-1)], PublishOptions(), queue=Inner.queue, headers={wire.DEADLINE: 10**14 - 1}
    )[0]
    broker.transport.publish_request(item, "amq.rabbitmq.reply-to.memory")
    with captured_logs() as logs:
        stats = broker.join()
    assert stats.handled == 1
    assert not [e for e in logs if e["event"] == "time_limit_monitor_failed"]


def test_timeouts_and_sizes_are_checked_before_anything_is_sent() -> None:
    broker = MemoryBroker()
    broker.declare(Inner)
    with pytest.raises(InvalidArgument, match="a day"):
        broker.ask(Inner, Asked(), timeout=1e10)
    with pytest.raises(InvalidArgument, match="a day"):
        broker.ask_all(Census(), timeout=1e10)
    with pytest.raises(InvalidArgument, match="bytes"):
        broker.ask(Inner, Asked(blob="x" * (17 * 1024 * 1024)), timeout=1)
    assert broker.pending(Inner) == 0


def test_ask_all_reports_errors_and_ignores_actors_that_answer_nothing() -> None:
    """Of three actors bound to the topic: one answers, one fails (its RemoteError is in
    the result), one answers nothing (silent: not counted towards `expect`, no error
    logged by its worker)."""
    broker = MemoryBroker()
    broker.declare(CountA, CountB, Auditor)
    with captured_logs() as logs, running(broker, CountA, CountB, Auditor, threads=3):
        answers = broker.ask_all(Census(), timeout=5, expect=2)
    assert answers["edges_count_a"] == Count(shard="a")
    error = answers["edges_count_b"]
    assert isinstance(error, RemoteError)
    assert error.error_reason == "rejected"
    assert "edges_auditor" not in answers
    assert not [e for e in logs if e["event"] == "reply_invalid"]


def test_ask_all_to_a_topic_no_actor_takes_fails_at_once() -> None:
    broker = MemoryBroker()
    started = time.monotonic()
    with pytest.raises(PublishError, match="no actor's queue is bound"):
        broker.ask_all(Census(), timeout=10)
    assert time.monotonic() - started < 2


class Ends(Middleware):
    def __init__(self) -> None:
        self.ended: list[tuple[str, Envelope | None, str | None]] = []

    def after_ask(
        self, actor: str, envelope: Envelope | None, error: BaseException | None, duration_s: float
    ) -> None:
        self.ended.append((actor, envelope, type(error).__name__ if error else None))


def test_after_ask_hears_of_an_ask_that_failed_before_its_request_was_built() -> None:
    """The broker is unreachable and the actor not declared yet: the ask fails fast with
    `BrokerUnavailable`, and `after_ask` hears of it (no envelope: none was built)."""
    ends = Ends()
    broker = RabbitBroker(
        "amqp://guest:guest@127.0.0.1:1/",
        namespace="edges",
        connect_timeout_s=1,
        middleware=[ends],
    )
    try:
        with pytest.raises(BrokerUnavailable):
            broker.ask(Inner, Asked(), timeout=3)
    finally:
        broker.close()
    assert ends.ended == [("edges_inner", None, "BrokerUnavailable")]
