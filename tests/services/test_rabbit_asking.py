"""Request/reply on RabbitMQ, both sides on the real broker: `RabbitAsking` (the caller's
connection, direct reply-to) driven by a plain pika "server", and a worker's replies
(`ReplyPublisher`, through `RabbitConsumer`) settled by hand."""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pika.exceptions
import pytest

from leveret.actors import Actor, handler
from leveret.schemas import Message, wire
from leveret.schemas.codec import encode
from leveret.schemas.envelope import new_message_id
from leveret.schemas.errors import (
    AskInterrupted,
    AskTimeout,
    BrokerUnavailable,
    InvalidReply,
    PublishError,
    RemoteError,
)
from leveret.services import RabbitBroker
from leveret.services.asking import PendingAsk
from leveret.services.delivery import Outcome, Reply
from leveret.services.middleware import Middleware, MiddlewareChain
from leveret.services.publishing import PublishOptions, outgoing
from leveret.services.rabbitmq._asking import RabbitAsking
from leveret.services.rabbitmq._consumer import RabbitConsumer
from leveret.services.rabbitmq._reply_publishing import ReplyPublisher
from leveret.services.runtime.consumer import Job
from leveret.services.testing import captured_logs
from leveret.services.topology import naming
from leveret.services.transport import OutgoingMessage
from tests.proxy import TcpProxy
from tests.support import RABBIT_ADDRESS, wait_until


class QuoteAsked(Message, topic="tests.asking.quote_asked"):
    n: int
    pad: str = ""


class Quote(Message, topic="tests.asking.quote"):
    n: int
    pad: str = ""


class Pricing(Actor, queue="pricing"):
    """Only its queue is used: the tests' server answers what arrives there."""

    @handler
    def on(self, msg: QuoteAsked) -> None: ...


Answer = Callable[
    [pika.BasicProperties, dict[str, Any]], list[tuple[str, pika.BasicProperties, bytes]]
]
"""What the server publishes for a request: (routing key, properties, body) each."""


def answer_ok(props: pika.BasicProperties, request: dict[str, Any]) -> list[Any]:
    """The answer a worker would give: to reply_to, correlated, ``ok``."""
    return [(props.reply_to, reply_props(props.message_id), encode(Quote(n=request["n"])))]


def reply_props(correlation_id: str | None, status: str = "ok") -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=wire.CONTENT_TYPE,
        type=Quote.topic(),
        message_id=new_message_id(),
        correlation_id=correlation_id,
        headers={wire.REPLY_STATUS: status},
    )


class Server:
    """A plain pika consumer of a queue that answers each request in a thread pool (after
    `delay_s`), as `answer` says; counts the requests it holds unanswered at once."""

    def __init__(self, url: str, queue: str, answer: Answer = answer_ok, delay_s: float = 0.0):
        self.answer = answer
        self.delay_s = delay_s
        self.requests: list[pika.BasicProperties] = []
        self.outstanding = 0
        self.most_outstanding = 0
        self._pool = ThreadPoolExecutor(128)
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self._channel = self._connection.channel()
        self._channel.basic_qos(prefetch_count=1000)
        self._channel.basic_consume(queue, self._on_request)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._connection.process_data_events(0.05)

    def _on_request(
        self, _channel: Any, method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        self.requests.append(props)
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        self._pool.submit(self._handle, method.delivery_tag, props, body)

    def _handle(self, tag: int, props: pika.BasicProperties, body: bytes) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)  # the handler's work
        replies = self.answer(props, json.loads(body))
        self._connection.add_callback_threadsafe(functools.partial(self._send, tag, replies))

    def _send(self, tag: int, replies: list[tuple[str, pika.BasicProperties, bytes]]) -> None:
        self.outstanding -= 1
        for routing_key, props, body in replies:
            self._channel.basic_publish("", routing_key, body, props)
        self._channel.basic_ack(tag)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._connection.close()


class Dropped(Middleware):
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def reply_dropped(self, reason: str) -> None:
        self.reasons.append(reason)


@pytest.fixture
def pricing(rabbit_broker: RabbitBroker) -> str:
    """The actor's queue (full name), declared; deleted with the namespace afterwards."""
    rabbit_broker.declare(Pricing)
    return naming.queue_name(rabbit_broker.namespace, Pricing.queue)


@pytest.fixture
def serve(rabbit_url: str, pricing: str) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(answer: Answer = answer_ok, delay_s: float = 0.0) -> Server:
        server = Server(rabbit_url, pricing, answer, delay_s)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def dropped() -> Dropped:
    return Dropped()


@pytest.fixture
def asking(rabbit_url: str, namespace: str, dropped: Dropped) -> Iterator[RabbitAsking]:
    chain = MiddlewareChain([dropped])
    asker = RabbitAsking(rabbit_url, namespace, chain=lambda: chain)
    yield asker
    asker.close()


def request(n: int, queue: str | None = "pricing", pad: str = "") -> OutgoingMessage:
    return outgoing([QuoteAsked(n=n, pad=pad)], PublishOptions(), queue=queue)[0]


def ask(
    asker: RabbitAsking,
    n: int,
    *,
    timeout_s: float = 10.0,
    queue: str | None = "pricing",
    **kw: Any,
) -> PendingAsk:
    item = request(n, queue)
    pending = PendingAsk(queue or "", item.envelope.message_id, Quote, timeout_s, **kw)
    asker.request(item, pending)
    return pending


def test_a_request_gets_its_answer(asking: RabbitAsking, serve: Callable[..., Server]) -> None:
    """The request goes to the actor's queue with a direct reply-to address; the answer
    (correlated by the request's message id) comes back to its sink."""
    server = serve()
    answer = ask(asking, 7).wait()
    assert answer == Quote(n=7)
    assert str(server.requests[0].reply_to).startswith("amq.rabbitmq.reply-to.")
    assert asking.unmatched_replies == asking.late_replies == 0


def test_a_hundred_threads_ask_at_once_on_one_connection(
    asking: RabbitAsking, serve: Callable[..., Server]
) -> None:
    """100 threads asking at once share one connection and are not serialized: the server
    (50 ms a request, in a pool) holds at least 50 of them unanswered at once."""
    server = serve(delay_s=0.05)
    ask(asking, 0).wait()  # connected
    answers: dict[int, Message] = {}
    go = threading.Barrier(100)

    def one(n: int) -> None:
        go.wait()
        answers[n] = ask(asking, n).wait()

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(n,)) for n in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert answers == {n: Quote(n=n) for n in range(100)}
    assert server.most_outstanding >= 50
    assert elapsed < 30 * 0.05 * 2  # a generous bound: serialized would take 5 s
    assert asking.connections_opened == 1


def test_a_reply_with_a_wrong_correlation_id_reaches_no_sink(
    asking: RabbitAsking, serve: Callable[..., Server], dropped: Dropped
) -> None:
    """A reply correlated to no request is dropped and counted unmatched; the request it
    pretends to answer still waits, and the others get their own answers."""

    def answer(props: pika.BasicProperties, body: dict[str, Any]) -> list[Any]:
        if body["n"] == 1:  # to the right address, with another id
            return [(props.reply_to, reply_props("f" * 32), encode(Quote(n=666)))]
        return answer_ok(props, body)

    serve(answer)
    first = ask(asking, 1, timeout_s=1.5)
    assert ask(asking, 2).wait() == Quote(n=2)
    wait_until(lambda: asking.unmatched_replies == 1, 5, "the unmatched reply counted")
    assert dropped.reasons == ["unmatched"]
    with pytest.raises(AskTimeout):
        first.wait()


def test_a_reply_after_forget_is_counted_late(
    asking: RabbitAsking, serve: Callable[..., Server], dropped: Dropped
) -> None:
    """The caller stopped waiting (forget) before the answer came: dropped, counted late."""
    server = serve(delay_s=0.3)
    pending = ask(asking, 3)
    wait_until(lambda: server.requests, 5, "the request taken")
    asking.forget(pending.message_id)
    wait_until(lambda: asking.late_replies == 1, 5, "the late reply counted")
    assert dropped.reasons == ["late"]
    assert asking.unmatched_replies == 0
    assert not pending.future.done()


def test_bad_replies_reach_only_their_own_sink(
    asking: RabbitAsking, serve: Callable[..., Server]
) -> None:
    """A garbage body, a 2 MB body and wrong headers are routed to their own request only,
    whose caller sees the error; the request beside them gets its answer."""
    big = encode(Quote(n=2, pad="x" * 2_000_000))

    def answer(props: pika.BasicProperties, body: dict[str, Any]) -> list[Any]:
        n = body["n"]
        if n == 1:
            return [(props.reply_to, reply_props(props.message_id), b"\xff{not json")]
        if n == 2:
            return [(props.reply_to, reply_props(props.message_id), big)]
        if n == 3:
            return [(props.reply_to, reply_props(props.message_id, "weird"), encode(Quote(n=3)))]
        return answer_ok(props, body)

    serve(answer)
    garbage = ask(asking, 1)
    huge = ask(asking, 2, max_reply_bytes=1_000_000)
    odd = ask(asking, 3)
    fine = ask(asking, 4)
    assert fine.wait() == Quote(n=4)
    with pytest.raises(InvalidReply, match="not a valid Quote"):
        garbage.wait()
    with pytest.raises(InvalidReply, match="bytes"):
        huge.wait()
    assert len(huge.future.result().body) == len(big)  # routed whole; the caller refused it
    with pytest.raises(InvalidReply, match=wire.REPLY_STATUS):
        odd.wait()
    assert asking.unmatched_replies == 0


def test_a_request_to_a_queue_that_does_not_exist_fails_at_once(
    asking: RabbitAsking, pricing: str
) -> None:
    """The broker returns it (mandatory): the sink fails with PublishError, not at the
    deadline."""
    started = time.monotonic()
    pending = ask(asking, 1, queue="nobody-here", timeout_s=30)
    with pytest.raises(PublishError, match="does not exist"):
        pending.wait()
    assert time.monotonic() - started < 5
    assert ask(asking, 2, queue="nobody-here").future.exception(10) is not None  # still works


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy(RABBIT_ADDRESS) as running_proxy:
        yield running_proxy


def test_a_cut_connection_fails_every_ask_in_flight_at_once(
    rabbit_url: str, namespace: str, proxy: TcpProxy, serve: Callable[..., Server]
) -> None:
    """The connection replies come on is cut with 10 asks in flight: each fails at once
    with AskInterrupted (long before its deadline); once the network is back, asks work."""
    server = serve(lambda _props, _body: [])  # holds every request, answers none
    asker = RabbitAsking(proxy.url(rabbit_url), namespace)
    try:
        pendings = [ask(asker, n, timeout_s=60) for n in range(10)]
        wait_until(lambda: len(server.requests) == 10, 10, "the requests taken")
        started = time.monotonic()
        proxy.cut()
        for pending in pendings:
            with pytest.raises(AskInterrupted, match="may or may not be handled"):
                pending.wait()
        assert time.monotonic() - started < 5
        proxy.restore()
        server.answer = answer_ok

        def answered() -> bool:
            try:
                return ask(asker, 11, timeout_s=5).wait() == Quote(n=11)
            except BrokerUnavailable:
                return False  # the broker was still known to be down: asked again

        wait_until(answered, 30, "an answer after the network came back")
    finally:
        asker.close()


def test_an_unreachable_broker_fails_asks_fast(namespace: str) -> None:
    """Nothing listens on the port: each ask fails with BrokerUnavailable at once, not at
    its deadline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    asker = RabbitAsking(f"amqp://guest:guest@127.0.0.1:{port}/", namespace)
    try:
        for n in range(3):
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="nothing was sent"):
                ask(asker, n, timeout_s=30).wait()
            assert time.monotonic() - started < 3
    finally:
        asker.close()


def test_close_interrupts_the_asks_in_flight(
    asking: RabbitAsking, serve: Callable[..., Server]
) -> None:
    """Closing the asking fails what waits (AskInterrupted); the next ask reconnects."""
    server = serve(lambda _props, _body: [])
    pending = ask(asking, 1, timeout_s=30)
    wait_until(lambda: server.requests, 10, "the request taken")
    asking.close()
    with pytest.raises(AskInterrupted):
        pending.wait()
    server.answer = answer_ok
    assert ask(asking, 2).wait() == Quote(n=2)


# The worker's side ------------------------------------------------------------------------


def a_reply(to: str, correlation_id: str, n: int) -> Reply:
    return Reply(
        to=to,
        correlation_id=correlation_id,
        status="ok",
        actor=Pricing.queue,
        message_id=new_message_id(),
        topic=Quote.topic(),
        body=encode(Quote(n=n)),
    )


def test_reply_publisher_refuses_an_address_that_is_not_direct_reply_to(
    rabbit_broker: RabbitBroker, pricing: str, asking: RabbitAsking, rabbit_url: str
) -> None:
    """A request whose reply_to names a queue (here an actor's) gets nothing written there:
    the reply is refused with a log line."""
    replies = ReplyPublisher(rabbit_url)
    try:
        with captured_logs() as events:
            replies.publish(a_reply(pricing, "c" * 32, 1))
        assert [e["event"] for e in events] == ["reply_refused"]
        # A reply to a real address after it: once it arrives, the refused one would have.
        item = request(5)
        real = PendingAsk("pricing", item.envelope.message_id, Quote, 10)
        holder = Server(rabbit_url, pricing, lambda props, _body: [])
        try:
            asking.request(item, real)
            wait_until(lambda: holder.requests, 10, "the request taken")
            reply_to = str(holder.requests[0].reply_to)
            replies.publish(a_reply(reply_to, item.envelope.message_id, 5))
            assert real.wait() == Quote(n=5)
        finally:
            holder.close()
        assert rabbit_broker.message_count(pricing) == 0
    finally:
        replies.close()


class Taken:
    """What a consumer hands the runtime, kept for the test to settle by hand."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def receive(self, job: Job) -> None:
        self.jobs.append(job)

    def fail(self, reason: str, _exit_code: int) -> None:
        raise AssertionError(f"the consumer failed: {reason}")


@pytest.fixture
def consumer(
    rabbit_url: str, namespace: str, pricing: str
) -> Iterator[tuple[RabbitConsumer, Taken]]:
    taken = Taken()
    worker = RabbitConsumer(rabbit_url, namespace, [Pricing], prefetch=10)
    worker.start(taken.receive, taken.fail)
    assert worker.consuming.wait(10)
    yield worker, taken
    worker.close()


def test_a_hostile_reply_to_does_not_disturb_the_worker(
    consumer: tuple[RabbitConsumer, Taken], asking: RabbitAsking, rabbit_broker: RabbitBroker
) -> None:
    """A request whose reply_to RabbitMQ 3.10 cannot decode (it closes the connection that
    publishes to it) answered first: the worker's consumer keeps its connection and its
    deliveries, and the next request is answered."""
    worker, taken = consumer
    hostile = request(1)
    fine = request(2)
    asking.request(hostile, PendingAsk("pricing", hostile.envelope.message_id, Quote, 0))
    pending = PendingAsk("pricing", fine.envelope.message_id, Quote, 10)
    asking.request(fine, pending)
    wait_until(lambda: len(taken.jobs) == 2, 10, "both requests delivered")
    jobs = {job.delivery.message_id: job for job in taken.jobs}
    first, second = jobs[hostile.envelope.message_id], jobs[fine.envelope.message_id]
    assert second.delivery.reply_to is not None
    assert second.delivery.reply_to.startswith("amq.rabbitmq.reply-to.")
    hostile_reply = a_reply("amq.rabbitmq.reply-to.a.b", "x", 1)
    worker.settle(first, Outcome("ack", first.delivery.envelope(), reply=hostile_reply))
    # RabbitMQ 3.x closes the connection the hostile reply went out on (a reply written
    # just after it would be lost with it) and the reply connection is opened again;
    # RabbitMQ 4.3 drops such a reply and keeps the connection.
    replies = worker._replies
    closes = _closes_on_hostile_reply_to(rabbit_broker)
    wait_until(
        lambda: replies.connections_opened == (2 if closes else 1) and replies.connected.is_set(),
        10,
        "the reply connection, again where the broker closed it",
    )
    worker.settle(
        second,
        Outcome(
            "ack",
            second.delivery.envelope(),
            reply=a_reply(second.delivery.reply_to, second.delivery.message_id, 2),
        ),
    )
    assert pending.wait() == Quote(n=2)
    assert worker.wait_settled(10)
    assert worker.connections_opened == 1
    assert worker.consuming.is_set()
    assert not any(job.delivery.redelivered for job in taken.jobs)
    assert rabbit_broker.message_count(naming.queue_name(rabbit_broker.namespace, "pricing")) == 0


def test_a_retry_keeps_reply_to_and_a_dead_letter_drops_it(
    consumer: tuple[RabbitConsumer, Taken], asking: RabbitAsking, rabbit_broker: RabbitBroker
) -> None:
    """A request retried comes back with its reply_to (its answer still reaches the
    caller); a dead letter carries none, so that a replay never answers anyone."""
    worker, taken = consumer
    item = request(3)
    pending = PendingAsk("pricing", item.envelope.message_id, Quote, 10)
    asking.request(item, pending)
    wait_until(lambda: len(taken.jobs) == 1, 10, "the request delivered")
    job = taken.jobs[0]
    worker.settle(job, Outcome("retry", job.delivery.envelope(), headers={wire.ATTEMPT: 2}))
    wait_until(lambda: len(taken.jobs) == 2, 10, "the retry delivered")
    retry = taken.jobs[1]
    assert retry.delivery.message_id == job.delivery.message_id
    assert retry.delivery.reply_to == job.delivery.reply_to
    worker.settle(
        retry,
        Outcome(
            "dead_letter",
            retry.delivery.envelope(),
            headers={wire.ERROR_REASON: "handler_error"},
            reply=Reply(
                to=retry.delivery.reply_to or "",
                correlation_id=retry.delivery.message_id,
                status="error",
                actor="pricing",
                message_id=new_message_id(),
                headers={wire.ERROR_REASON: "handler_error", wire.ERROR_MESSAGE: "boom"},
            ),
        ),
    )
    with pytest.raises(RemoteError, match="boom"):
        pending.wait()
    assert worker.wait_settled(10)
    dlq = naming.dlq_name(rabbit_broker.namespace, "pricing")
    wait_until(lambda: rabbit_broker.message_count(dlq) == 1, 10, "the dead letter stored")
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_broker.url))
    try:
        _method, props, _body = connection.channel().basic_get(dlq, auto_ack=False)
        assert props is not None
        assert props.reply_to is None
    finally:
        connection.close()


def _closes_on_hostile_reply_to(broker: RabbitBroker) -> bool:
    """Whether this broker closes a connection that publishes to a crafted direct reply-to
    address (RabbitMQ 3.x: 541 INTERNAL_ERROR), as a plain pika client sees it."""
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        connection.channel().basic_publish("", "amq.rabbitmq.reply-to.a.b", b"x")
        connection.process_data_events(1.0)
        connection.sleep(0.5)
    except pika.exceptions.AMQPError:
        return True
    closed = not connection.is_open
    if not closed:
        connection.close()
    return closed
