"""Request/reply on both brokers: `ask` returns the actor's typed answer, errors come back
typed and at once, deadlines travel with the request and bound every wait."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pika
import pytest

from leveret.actors import Actor, AsyncContext, Context, RetryPolicy, handler
from leveret.actors.control import Reject
from leveret.actors.dispatch import configure
from leveret.actors.retry import fixed
from leveret.schemas import Message, wire
from leveret.schemas.envelope import Envelope
from leveret.schemas.errors import (
    AskTimeout,
    InvalidArgument,
    NotHandled,
    RemoteError,
)
from leveret.services.broker import Broker, RabbitBroker
from leveret.services.delivery import Outcome
from leveret.services.memory.transport import MemoryTransport
from leveret.services.middleware import Middleware
from leveret.services.publishing import PublishOptions, outgoing
from leveret.services.testing import MemoryBroker, captured_logs
from tests.support import running, wait_until, with_middleware


class QuoteAsked(Message, topic="tests.ask.quote_asked"):
    sku: str
    fail: str = ""
    sleep_s: float = 0.0


class Quote(Message, topic="tests.ask.quote"):
    sku: str
    price: int
    by: str = ""


class Pricing(Actor, queue="ask_pricing"):
    retry = RetryPolicy(attempts=3, backoff=fixed(0))
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    @handler
    def quote(self, msg: QuoteAsked, ctx: Context) -> Quote | None:
        with self.lock:
            self.attempts[msg.sku] = self.attempts.get(msg.sku, 0) + 1
        if msg.sleep_s:
            ends = time.monotonic() + msg.sleep_s
            while time.monotonic() < ends:  # Python code: the time limit can interrupt it
                time.sleep(0.01)
        if msg.fail == "once" and ctx.attempt == 1:
            raise ConnectionError("the price service blinked")
        if msg.fail == "reject":
            raise Reject("no such sku")
        if msg.fail == "nothing":
            return None
        if msg.fail == "ctx":
            ctx.reply(Quote(sku=msg.sku, price=2, by="ctx.reply"))
            return None
        if msg.fail == "wrong":
            return QuoteAsked(sku="not a quote")  # type: ignore[return-value]
        return Quote(sku=msg.sku, price=3, by="pricing")


class Silent(Actor, queue="ask_silent"):
    @handler
    def quote(self, msg: QuoteAsked) -> None:
        return None


class DeskAsked(Message, topic="tests.ask.desk_asked"):
    sku: str


class Desk(Actor, queue="ask_desk"):
    """Asks Pricing while answering: sync and async handlers ask in turn."""

    @handler
    def relay(self, msg: DeskAsked, ctx: Context) -> Quote:
        quote: Quote = ctx.ask(Pricing, QuoteAsked(sku=msg.sku), timeout=5)
        return Quote(sku=quote.sku, price=quote.price * 10, by="desk")


class AsyncDeskAsked(Message, topic="tests.ask.async_desk_asked"):
    sku: str


class AsyncDesk(Actor, queue="ask_async_desk"):
    @handler
    async def relay(self, msg: AsyncDeskAsked, ctx: AsyncContext) -> Quote:
        quote: Quote = await ctx.ask(Pricing, QuoteAsked(sku=msg.sku), timeout=5)
        return Quote(sku=quote.sku, price=quote.price * 100, by="async desk")


class Census(Message, topic="tests.ask.census"):
    pass


class Count(Message, topic="tests.ask.count"):
    shard: str


class ShardA(Actor, queue="ask_shard_a"):
    @handler
    def count(self, msg: Census) -> Count:
        return Count(shard="a")


class ShardB(Actor, queue="ask_shard_b"):
    @handler
    async def count(self, msg: Census) -> Count:
        return Count(shard="b")


@pytest.fixture(autouse=True)
def _fresh_attempts() -> None:
    Pricing.attempts = {}


def test_ask_returns_the_typed_answer(broker: Broker) -> None:
    """`Actor.ask` through the configured broker and `Broker.ask` both return the answer,
    validated as the handler's reply type; ``ctx.reply`` answers too."""
    with running(broker, Pricing, threads=2):
        configure(broker)
        try:
            answer = Pricing.ask(QuoteAsked(sku="a"), timeout=10)
        finally:
            configure(None)
        assert answer == Quote(sku="a", price=3, by="pricing")
        assert broker.ask(Pricing, QuoteAsked(sku="b", fail="ctx"), timeout=10) == Quote(
            sku="b", price=2, by="ctx.reply"
        )


def test_an_async_caller_awaits_many_answers_at_once(broker: Broker) -> None:
    """`ask_async` from asyncio code: 50 asks at once, every answer its own, and the
    loop keeps ticking meanwhile."""
    with running(broker, Pricing, threads=4):

        async def scenario() -> tuple[list[Any], int]:
            ticks = 0
            done = asyncio.Event()

            async def tick() -> None:
                nonlocal ticks
                while not done.is_set():
                    ticks += 1
                    await asyncio.sleep(0.005)

            ticker = asyncio.create_task(tick())
            answers = await asyncio.gather(
                *(
                    broker.ask_async(Pricing, QuoteAsked(sku=f"s{n}", sleep_s=0.05), timeout=20)
                    for n in range(50)
                )
            )
            done.set()
            await ticker
            return list(answers), ticks

        answers, ticks = asyncio.run(scenario())
    assert [answer.sku for answer in answers] == [f"s{n}" for n in range(50)]
    assert ticks > 20


def test_handlers_ask_other_actors_sync_and_async(broker: Broker) -> None:
    """``ctx.ask`` in a sync handler and ``await ctx.ask`` in an async one: the answer of
    the actor asked, inside the answer of the actor asked first."""
    with running(broker, Pricing, Desk, AsyncDesk, threads=4, concurrency=4):
        assert broker.ask(Desk, DeskAsked(sku="d"), timeout=10).price == 30
        assert broker.ask(AsyncDesk, AsyncDeskAsked(sku="e"), timeout=10).price == 300


def test_a_retried_request_is_answered_by_its_retry(broker: Broker) -> None:
    """The handler fails once and its policy retries: the caller keeps waiting and gets
    the retry's answer."""
    with running(broker, Pricing, threads=2):
        answer = broker.ask(Pricing, QuoteAsked(sku="r", fail="once"), timeout=10)
    assert answer.sku == "r"
    assert Pricing.attempts["r"] == 2


def test_a_dead_lettered_request_fails_at_once_with_remote_error(broker: Broker) -> None:
    """Rejected: `RemoteError` names the actor, the error's type and message, long before
    the deadline; the traceback stays in the dead letter."""
    with running(broker, Pricing, threads=2):
        started = time.monotonic()
        with pytest.raises(RemoteError) as raised:
            broker.ask(Pricing, QuoteAsked(sku="x", fail="reject"), timeout=20)
        assert time.monotonic() - started < 10
    error = raised.value
    assert error.actor == "ask_pricing"
    assert error.error_type == "leveret.actors.control.Reject"
    assert error.error_message == "no such sku"
    assert error.error_reason == "rejected"
    assert "Traceback" not in str(error)
    [letter] = broker.dead_letters(Pricing)
    assert letter.message_id == error.message_id


@pytest.mark.parametrize(("fail", "reason"), [("nothing", "no_reply"), ("wrong", "invalid_reply")])
def test_a_handler_without_a_valid_answer_is_a_remote_error(
    broker: Broker, fail: str, reason: str
) -> None:
    """Asked, it returned None (and no ctx.reply), or another type: its caller gets a
    `RemoteError` with the reason at once; the request is acked (its work is done)."""
    with running(broker, Pricing, threads=2) as worker:
        with pytest.raises(RemoteError) as raised:
            broker.ask(Pricing, QuoteAsked(sku="n", fail=fail), timeout=20)
        wait_until(lambda: worker.stats.handled == 1, 10, "the request acked")
    assert raised.value.error_reason == reason
    assert broker.dead_letter_count(Pricing) == 0


def test_no_worker_means_ask_timeout_at_the_deadline(broker: Broker) -> None:
    broker.declare(Pricing)
    started = time.monotonic()
    with pytest.raises(AskTimeout) as raised:
        broker.ask(Pricing, QuoteAsked(sku="t"), timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 5, elapsed
    assert raised.value.actor == "ask_pricing"


def test_a_request_taken_after_its_deadline_is_not_handled(broker: Broker) -> None:
    """Asked with nobody consuming, the request waits in the queue past its deadline; the
    worker that takes it later acks it without running the handler (logged, and the
    middleware sees an expired outcome)."""
    seen: list[Outcome] = []

    class Outcomes(Middleware):
        def after_handle(
            self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
        ) -> None:
            if outcome is not None:
                seen.append(outcome)

    observed = with_middleware(broker, Outcomes())
    observed.declare(Pricing)
    with pytest.raises(AskTimeout):
        observed.ask(Pricing, QuoteAsked(sku="late"), timeout=0.3)
    if isinstance(broker, MemoryBroker):
        broker.advance_clock(1)
    else:
        time.sleep(0.1)
    with captured_logs() as logs, running(observed, Pricing, threads=1) as worker:
        wait_until(lambda: worker.stats.handled == 1, 10, "the expired request acked")
    assert "late" not in Pricing.attempts
    assert [outcome.expired for outcome in seen] == [True]
    assert [e["event"] for e in logs if e["event"] == "ask_expired"] == ["ask_expired"]


def test_a_handler_is_cut_off_at_the_deadline_and_not_retried(broker: Broker) -> None:
    """The handler's time limit is capped by the time its caller has left: past it the
    handler is interrupted, the request acked (not retried: nobody waits for its answer)."""
    with running(broker, Pricing, threads=2) as worker:
        started = time.monotonic()
        with pytest.raises(AskTimeout):
            broker.ask(Pricing, QuoteAsked(sku="slow", sleep_s=30), timeout=1)
        assert time.monotonic() - started < 5
        wait_until(lambda: worker.stats.handled == 1, 10, "the request acked once cut off")
        assert worker.stats.retried == 0
    assert Pricing.attempts["slow"] == 1


def test_ask_all_gathers_every_actors_answer(broker: Broker) -> None:
    with running(broker, ShardA, ShardB, threads=2, concurrency=2):
        started = time.monotonic()
        answers = broker.ask_all(Census(), timeout=10, expect=2)
        assert time.monotonic() - started < 8
        assert answers == {"ask_shard_a": Count(shard="a"), "ask_shard_b": Count(shard="b")}
        assert broker.ask_all(Census(), timeout=0.5) == answers


def test_what_an_ask_is_refused_for_is_said_where_it_is_passed(broker: Broker) -> None:
    broker.declare(Pricing, Silent)
    with pytest.raises(NotHandled, match="annotate its return"):
        broker.ask(Silent, QuoteAsked(sku="q"))
    with pytest.raises(NotHandled, match="no handler"):
        broker.ask(Pricing, Census())
    with pytest.raises(InvalidArgument, match="timeout"):
        broker.ask(Pricing, QuoteAsked(sku="q"), timeout=-1)
    with pytest.raises(TypeError, match="delay"):
        broker.ask(Pricing, QuoteAsked(sku="q"), delay=5)  # type: ignore[call-arg]
    with pytest.raises(InvalidArgument, match="expect"):
        broker.ask_all(Census(), expect=0)


class Asks(Middleware):
    def __init__(self) -> None:
        self.ended: list[tuple[str, str | None]] = []

    def after_ask(
        self, actor: str, envelope: Envelope | None, error: BaseException | None, duration_s: float
    ) -> None:
        assert duration_s >= 0
        self.ended.append((actor, type(error).__name__ if error else None))


def test_middleware_hears_how_each_ask_ended(broker: Broker) -> None:
    asks = Asks()
    observed = with_middleware(broker, asks)
    with running(observed, Pricing, threads=2):
        observed.ask(Pricing, QuoteAsked(sku="m"), timeout=10)
        with pytest.raises(RemoteError):
            observed.ask(Pricing, QuoteAsked(sku="m", fail="reject"), timeout=10)
    with pytest.raises(AskTimeout):
        observed.ask(Pricing, QuoteAsked(sku="m"), timeout=0.2)
    assert asks.ended == [
        ("ask_pricing", None),
        ("ask_pricing", "RemoteError"),
        ("ask_pricing", "AskTimeout"),
    ]


def test_the_virtual_clock_passes_a_memory_asks_deadline(memory_broker: MemoryBroker) -> None:
    """In memory, deadlines are on the virtual clock: advancing it past one fails the ask
    at once, whatever its real-time bound."""
    memory_broker.declare(Pricing)
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            memory_broker.ask(Pricing, QuoteAsked(sku="v"), timeout=60)
        except BaseException as exc:  # kept for the assertion
            errors.append(exc)

    asker = threading.Thread(target=ask)
    started = time.monotonic()
    asker.start()
    time.sleep(0.2)
    memory_broker.advance_clock(61)
    asker.join(10)
    assert time.monotonic() - started < 5
    assert [type(error) for error in errors] == [AskTimeout]


def test_eager_mode_answers_in_the_asking_thread() -> None:
    broker = MemoryBroker(eager=True)
    broker.declare(Pricing)
    assert broker.ask(Pricing, QuoteAsked(sku="e")).by == "pricing"
    with pytest.raises(RemoteError, match="no such sku"):
        broker.ask(Pricing, QuoteAsked(sku="e", fail="reject"))


def _raw_request(broker: Broker, reply_to: str, deadline: object = None) -> None:
    """A request as any client of the vhost may send it: to Pricing's queue, with this
    ``reply_to`` and deadline header."""
    headers: dict[str, Any] = {} if deadline is None else {wire.DEADLINE: deadline}
    item = outgoing(
        [QuoteAsked(sku="raw")], PublishOptions(), queue=Pricing.queue, headers=headers
    )[0]
    if isinstance(broker.transport, MemoryTransport):
        broker.transport.publish_request(item, reply_to)
        return
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        connection.channel().basic_publish(
            "",
            f"{broker.namespace}.{Pricing.queue}",
            item.body,
            pika.BasicProperties(
                type=item.envelope.topic,
                message_id=item.envelope.message_id,
                reply_to=reply_to,
                headers=headers,
            ),
        )
    finally:
        connection.close()


@pytest.mark.parametrize("deadline", ["soon", -5, 2**62, {"a": 1}, True])
def test_a_reply_to_naming_a_queue_is_never_written_to(broker: Broker, deadline: object) -> None:
    """A request whose ``reply_to`` names an actor's queue (not direct reply-to) is handled
    but not answered there; a deadline header that is not a deadline is no deadline."""
    broker.declare(Pricing, Silent)
    silent = f"{broker.namespace}.{Silent.queue}"
    with running(broker, Pricing, threads=1) as worker:
        _raw_request(broker, silent, deadline)
        wait_until(lambda: worker.stats.handled == 1, 10, "the request handled")
    assert Pricing.attempts == {"raw": 1}
    time.sleep(0.2)
    if isinstance(broker, RabbitBroker):
        assert broker.message_count(silent) == 0
    else:
        assert isinstance(broker.transport, MemoryTransport)
        assert len(broker.transport.queues[silent]) == 0


def test_many_first_asks_at_once_declare_the_actor_once(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 threads make their first ask to an actor at the same moment: its topology is
    declared once (the others wait for that declaration), and every ask is answered."""
    declared: list[object] = []
    declare = broker.transport.declare

    def counting(actors: Any, **options: Any) -> None:
        declared.append(actors)
        declare(actors, **options)

    monkeypatch.setattr(broker.transport, "declare", counting)
    with running(broker, Pricing, threads=4):
        declared.clear()  # the worker's own
        broker._declared.discard(Pricing)  # as in a new process that never sent to it
        start = threading.Barrier(50)
        answers: list[Any] = []

        def ask(n: int) -> None:
            start.wait(10)
            answers.append(broker.ask(Pricing, QuoteAsked(sku=f"first{n}"), timeout=20))

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(answers) == 50
    assert len(declared) == 1
