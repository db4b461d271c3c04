"""A project's middleware on both brokers: every hook is called, in order, with the right
arguments, and a middleware whose every hook raises changes nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pika
import pytest

from leveret.actors import NO_RETRY, Actor, AsyncContext, Context, RetryPolicy, handler
from leveret.actors.handling import current_correlation_id
from leveret.actors.retry import fixed
from leveret.schemas import Message, wire
from leveret.schemas.codec import encode
from leveret.schemas.envelope import Envelope, new_message_id
from leveret.services.broker import Broker
from leveret.services.delivery import Outcome, Reply
from leveret.services.memory.transport import MemoryTransport
from leveret.services.middleware import Middleware, Publishing
from leveret.services.runtime.execution import Executor
from leveret.services.runtime.worker import Worker
from leveret.services.testing import MemoryBroker, captured_logs
from tests.support import running, wait_until, with_middleware


class Order(Message, topic="tests.middleware.order"):
    n: int
    fail: bool = False


class Orders(Actor, queue="mw_orders"):
    retry = NO_RETRY

    @handler
    def take(self, msg: Order, ctx: Context) -> None:
        if msg.fail:
            raise ValueError("order refused")


class AsyncOrders(Actor, queue="mw_async_orders"):
    retry = RetryPolicy(attempts=2, backoff=fixed(0))

    @handler
    async def take(self, msg: Order, ctx: AsyncContext) -> None:
        if msg.fail:
            raise ValueError("async order refused")


class Hand(Actor, queue="mw_hand"):
    """Answers asks: by a worker, or by hand (`_answer_twice_by_hand`)."""

    @handler
    def take(self, msg: Order) -> Order:
        return Order(n=msg.n + 1)


Event = tuple[Any, ...]


class Recording(Middleware):
    """Writes every hook's call, with what identifies it, into a shared list."""

    def __init__(self, name: str, events: list[Event]) -> None:
        self.name, self.events, self.lock = name, events, threading.Lock()

    def _add(self, *event: Any) -> None:
        with self.lock:
            self.events.append((self.name, *event))

    def before_publish(self, publishing: Publishing) -> None:
        self._add("before_publish", publishing.operation, publishing.routing_key)

    def after_publish(self, publishing: Publishing, error: BaseException | None) -> None:
        self._add("after_publish", tuple(publishing.message_ids), error)

    def publish_confirmed(self, ok: bool, returned: bool, confirm_s: float | None) -> None:
        self._add("publish_confirmed", ok, returned)

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        self._add("before_handle", actor, envelope.message_id)

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        assert duration_s >= 0
        self._add("after_handle", actor, envelope.message_id, outcome and outcome.fate)

    def after_settle(self, actor: str, outcome: Outcome, error: BaseException | None) -> None:
        self._add("after_settle", actor, outcome.envelope.message_id, outcome.fate, error)

    def worker_started(self, worker: Worker) -> None:
        self._add("worker_started", worker.consuming.is_set())

    def worker_stopping(self, worker: Worker) -> None:
        self._add("worker_stopping")

    def worker_stopped(self, worker: Worker) -> None:
        self._add("worker_stopped")


def _index(events: list[Event], *event: Any) -> int:
    return events.index(event)


def _run(
    broker: Broker, events: list[Event], sends: list[tuple[type[Actor], Order]], settles: int
) -> list[str]:
    """Send each order through a broker running two recording middleware (`a` then `b`)
    and a worker; return the message ids once `settles` deliveries were settled."""
    observed = with_middleware(broker, Recording("a", events), Recording("b", events))
    ids: list[str] = []
    with running(observed, Orders, AsyncOrders, threads=2):
        for actor, order in sends:
            ids.append(observed.send(actor, order))
        wait_until(
            lambda: len([e for e in events if e[:2] == ("a", "after_settle")]) >= settles,
            20,
            "every delivery settled",
        )
    return ids


@pytest.mark.rabbitmq
def test_every_hook_runs_in_order_with_its_arguments(broker: Broker) -> None:
    """publish → confirmed → handle → settle for each message, sync and async handlers;
    before-hooks in the order given, after-hooks in reverse; the worker's start before
    any delivery and its stop after every settle."""
    events: list[Event] = []
    sync, async_ = _run(broker, events, [(Orders, Order(n=1)), (AsyncOrders, Order(n=2))], 2)
    queue = {sync: f"{broker.namespace}.mw_orders", async_: f"{broker.namespace}.mw_async_orders"}
    for message_id, actor in ((sync, "mw_orders"), (async_, "mw_async_orders")):
        sent = [
            _index(events, name, "before_publish", "send", queue[message_id]) for name in ("a", "b")
        ]
        published = [
            _index(events, name, "after_publish", (message_id,), None) for name in ("b", "a")
        ]
        confirms = [
            i
            for i, e in enumerate(events)
            if e[1] == "publish_confirmed" and sent[1] < i < published[0]
        ]
        assert [events[i] for i in confirms] == [
            ("a", "publish_confirmed", True, False),
            ("b", "publish_confirmed", True, False),
        ]
        handled = [
            _index(events, "a", "before_handle", actor, message_id),
            _index(events, "b", "before_handle", actor, message_id),
            _index(events, "b", "after_handle", actor, message_id, "ack"),
            _index(events, "a", "after_handle", actor, message_id, "ack"),
            _index(events, "b", "after_settle", actor, message_id, "ack", None),
            _index(events, "a", "after_settle", actor, message_id, "ack", None),
        ]
        assert sent == sorted(sent)
        assert published == sorted(published)
        assert handled == sorted(handled)
        assert sent[1] < handled[0], "handled before it was published"
    assert events[:2] == [("a", "worker_started", False), ("b", "worker_started", False)]
    assert events[-4:] == [
        ("b", "worker_stopping"),
        ("a", "worker_stopping"),
        ("b", "worker_stopped"),
        ("a", "worker_stopped"),
    ]


@pytest.mark.rabbitmq
def test_the_outcome_reaches_after_handle_and_after_settle(broker: Broker) -> None:
    """A dead-lettered sync message and an async one retried, then dead-lettered: each
    attempt's fate is what the hooks see."""
    events: list[Event] = []
    dead, retried = _run(
        broker,
        events,
        [(Orders, Order(n=3, fail=True)), (AsyncOrders, Order(n=4, fail=True))],
        3,  # the async one is retried once
    )
    fates = [(e[2], e[3], e[4]) for e in events if e[:2] == ("a", "after_handle")]
    assert ("mw_orders", dead, "dead_letter") in fates
    assert [fate for actor, _id, fate in fates if actor == "mw_async_orders"][:1] == ["retry"]
    settled = [(e[3], e[4], e[5]) for e in events if e[:2] == ("a", "after_settle")]
    assert (dead, "dead_letter", None) in settled
    assert (retried, "retry", None) in settled


class Raising(Middleware):
    """Every hook raises."""

    def before_publish(self, publishing: Publishing) -> None:
        raise RuntimeError("middleware bug")

    def after_publish(self, publishing: Publishing, error: BaseException | None) -> None:
        raise RuntimeError("middleware bug")

    def publish_confirmed(self, ok: bool, returned: bool, confirm_s: float | None) -> None:
        raise RuntimeError("middleware bug")

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        raise RuntimeError("middleware bug")

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        raise RuntimeError("middleware bug")

    def after_settle(self, actor: str, outcome: Outcome, error: BaseException | None) -> None:
        raise RuntimeError("middleware bug")

    def worker_started(self, worker: Worker) -> None:
        raise RuntimeError("middleware bug")

    def worker_stopping(self, worker: Worker) -> None:
        raise RuntimeError("middleware bug")

    def worker_stopped(self, worker: Worker) -> None:
        raise RuntimeError("middleware bug")

    def after_ask(
        self, actor: str, envelope: Envelope | None, error: BaseException | None, duration_s: float
    ) -> None:
        raise RuntimeError("middleware bug")

    def reply_dropped(self, reason: str) -> None:
        raise RuntimeError("middleware bug")


def _answer_twice_by_hand(broker: Broker) -> Order:
    """Ask `Hand` with no worker running it, and answer the request twice by hand: the
    first answer is the ask's, the second one comes late (``reply_dropped``)."""
    broker.declare(Hand)
    if isinstance(broker.transport, MemoryTransport):
        answering = threading.Thread(
            target=_answer_in_memory, args=(broker.transport,), daemon=True
        )
    else:
        answering = threading.Thread(target=_answer_on_rabbitmq, args=(broker,), daemon=True)
    answering.start()
    answer: Order = broker.ask(Hand, Order(n=1), timeout=10)
    answering.join(10)
    return answer


def _answer_in_memory(transport: MemoryTransport) -> None:
    queue = transport.queues[f"{transport.namespace}.mw_hand"]
    wait_until(lambda: len(queue) == 1, 5, "the request queued")
    with transport.changed:
        delivery = queue.popleft()
    for _ in range(2):
        transport.asking.deliver(_reply_to(delivery.reply_to or "", delivery.message_id))


def _answer_on_rabbitmq(broker: Broker) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channel = connection.channel()
        deadline = time.monotonic() + 5
        props: pika.BasicProperties | None = None
        while props is None and time.monotonic() < deadline:
            _method, props, _body = channel.basic_get(f"{broker.namespace}.mw_hand", auto_ack=True)
            time.sleep(0.02)
        assert props is not None
        assert props.reply_to
        assert props.message_id
        reply = _reply_to(props.reply_to, props.message_id)
        for _ in range(2):
            channel.basic_publish(
                "",
                props.reply_to,
                reply.body,
                pika.BasicProperties(
                    type=reply.topic,
                    correlation_id=reply.correlation_id,
                    headers=reply.wire_headers(),
                ),
            )
            time.sleep(0.2)
    finally:
        connection.close()


def _reply_to(to: str, message_id: str) -> Reply:
    return Reply(
        to=to,
        correlation_id=message_id,
        status="ok",
        actor="mw_hand",
        message_id=new_message_id(),
        topic=Order.topic(),
        body=encode(Order(n=2)),
    )


@pytest.mark.rabbitmq
def test_a_middleware_whose_every_hook_raises_changes_nothing(broker: Broker) -> None:
    """Messages are published, handled, retried and dead-lettered as without it (sync and
    async handlers), the worker starts and stops cleanly, and each failure is logged."""
    observed = with_middleware(broker, Raising())
    with captured_logs() as logs:
        with running(observed, Orders, AsyncOrders, threads=2) as worker:
            observed.send(Orders, Order(n=1))
            observed.send(AsyncOrders, Order(n=2))
            observed.send(Orders, Order(n=3, fail=True))
            observed.send(AsyncOrders, Order(n=4, fail=True))
            wait_until(
                lambda: (
                    worker.stats.handled == 2
                    and worker.stats.retried == 1
                    and worker.stats.dead_lettered == 2
                ),
                20,
                "two handled, one retried, two dead-lettered",
            )
            assert worker.threads_alive()
        assert worker.shutdown(10) == 0
        assert _answer_twice_by_hand(observed) == Order(n=2)
        wait_until(
            lambda: any(e.get("hook") == "reply_dropped" for e in logs), 10, "the late answer"
        )
    [sync_letter] = broker.dead_letters(Orders)
    [async_letter] = broker.dead_letters(AsyncOrders)
    assert sync_letter.headers[wire.ERROR_REASON] == "handler_error"
    assert async_letter.headers[wire.ERROR_REASON] == "retries_exhausted"
    failed = {e["hook"] for e in logs if e["event"] == "middleware_hook_failed"}
    every_hook = {name for name in vars(Middleware) if not name.startswith("_")}
    assert failed == every_hook


class Contextual(Middleware):
    """Records what the handle hooks see of the message's context, and of a cut-off run."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        self.seen.append(("before", current_correlation_id(), None))

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        self.seen.append(("after", current_correlation_id(), outcome.fate if outcome else None))


class Sleepy(Actor, queue="mw_sleepy"):
    @handler
    async def take(self, msg: Order, ctx: AsyncContext) -> None:
        await asyncio.sleep(30)


def test_handle_hooks_run_in_the_messages_context() -> None:
    """Both handle hooks see the handled message's correlation id (what `ctx.publish`
    carries on, and the log fields), as the handler does."""
    recorder = Contextual()
    observed = MemoryBroker(middleware=[recorder])
    observed.send(Orders, Order(n=1), correlation_id="order-42")
    observed.join()
    assert recorder.seen == [("before", "order-42", None), ("after", "order-42", "ack")]


def test_a_handler_cut_off_still_gets_its_after_handle() -> None:
    """An async handler cancelled mid-way (a worker's shutdown) has no outcome: its
    after-hooks run all the same, with None, so what the before-hooks opened is closed."""
    recorder = Contextual()
    observed = MemoryBroker(middleware=[recorder])
    observed.send(Sleepy, Order(n=1), correlation_id="cut")
    taken = observed.transport.take([f"{observed.namespace}.mw_sleepy"])
    assert taken is not None
    executor = Executor(Sleepy, namespace=observed.namespace, middleware=observed.middleware)

    async def cancel_it() -> None:
        task = asyncio.ensure_future(executor.run_async(taken[1]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    assert recorder.seen == [("before", "cut", None), ("after", "cut", None)]
    assert current_correlation_id() is None  # nothing of the message stays bound


def test_prepared_messages_are_published_between_their_own_hooks() -> None:
    """`prepare` builds (its after-hook says ``prepare``: nothing is sent yet); publishing
    what it built, together or each on its own, is a ``publish_prepared`` call."""
    events: list[Event] = []
    observed = MemoryBroker(middleware=[Recording("a", events)])
    observed.declare(Orders)
    first = observed.prepare(Order(n=1), actor=Orders)
    second = observed.prepare(Order(n=2), actor=Orders)
    observed.publish_prepared([first])
    assert observed.publish_prepared_each([second]) == [None]
    queue = f"{observed.namespace}.mw_orders"
    ids = [first.envelope.message_id, second.envelope.message_id]
    assert [e for e in events if e[1] in ("before_publish", "after_publish")] == [
        ("a", "before_publish", "prepare", queue),
        ("a", "after_publish", (ids[0],), None),
        ("a", "before_publish", "prepare", queue),
        ("a", "after_publish", (ids[1],), None),
        ("a", "before_publish", "publish_prepared", queue),
        ("a", "after_publish", (ids[0],), None),
        ("a", "before_publish", "publish_prepared", queue),
        ("a", "after_publish", (ids[1],), None),
    ]


class Stamping(Middleware):
    """Adds a header of its own, and tries to forge one of Leveret's."""

    def before_publish(self, publishing: Publishing) -> None:
        publishing.headers["x-tenant"] = "acme"
        publishing.headers["X-Leveret-Error-Reason"] = "forged"


def test_before_publish_adds_headers_but_never_leveret_s_own() -> None:
    """What `before_publish` puts in `publishing.headers` travels with every message of the
    call, but for headers named like Leveret's (dropped, and logged)."""
    observed = MemoryBroker(middleware=[Stamping()])
    observed.declare(Orders)
    with captured_logs() as logs:
        observed.send(Orders, Order(n=1))
    taken = observed.transport.take([f"{observed.namespace}.mw_orders"])
    assert taken is not None
    headers = taken[1].headers
    assert headers["x-tenant"] == "acme"
    assert not any(key.lower() == wire.ERROR_REASON for key in headers)
    [dropped] = [e for e in logs if e["event"] == "middleware_header_dropped"]
    assert dropped["headers"] == ["X-Leveret-Error-Reason"]
