"""The publisher under faults: many callers timing out while the broker is away, a message
that cannot be encoded, a declaration the broker refuses, a broker that blocks publishing.
One bad publish never holds up the others; every caller gets the real reason."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from leveret.actors import Actor, handler
from leveret.schemas import Message
from leveret.schemas.errors import (
    BrokerUnavailable,
    DefinitionError,
    PublishError,
    PublishTimeout,
)
from leveret.services import RabbitBroker
from leveret.services.rabbitmq._outgoing import Outgoing
from leveret.services.rabbitmq._publisher import Publisher
from leveret.services.testing import captured_logs
from leveret.services.topology import naming
from tests.proxy import TcpProxy
from tests.support import RABBITMQCTL, Recorder, running, wait_until

pytestmark = [pytest.mark.fault]


class Ping(Message, topic="tests.publisher.ping"):
    n: int


class Pings(Actor, queue="pings"):
    """Where the pings go; the tests count its queue, nothing handles it."""

    @handler
    def on(self, msg: Ping) -> None: ...


def _queued(broker: RabbitBroker) -> int:
    return broker.message_count(naming.queue_name(broker.namespace, Pings.queue))


def test_sixteen_threads_timing_out_while_the_broker_is_away(
    rabbit_broker: RabbitBroker, proxy: TcpProxy, rabbit_url: str
) -> None:
    """16 threads publish with 1 s timeouts while the connection is cut: each call fails
    with PublishTimeout (no confirm in time) or, once the broker is known to be unreachable,
    BrokerUnavailable (nothing sent), the I/O thread survives, no socket is left behind, and
    once the broker is back every later publish is stored."""
    rabbit_broker.declare(Pings)
    broker = RabbitBroker(
        proxy.url(rabbit_url), namespace=rabbit_broker.namespace, confirm_timeout_s=1
    )
    errors: list[BaseException] = []
    try:
        broker.send(Pings, Ping(n=0))
        proxy.cut()

        def hammer() -> None:
            for n in range(5):
                try:
                    broker.send(Pings, Ping(n=n))
                except PublishError as exc:
                    errors.append(exc)

        with captured_logs() as logs:
            threads = [threading.Thread(target=hammer) for _ in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert len(errors) == 80
        assert all(isinstance(error, PublishTimeout | BrokerUnavailable) for error in errors)
        assert not [event for event in logs if event["event"] == "io_thread_crashed"]
        assert broker.publisher.running
        proxy.restore()
        wait_until(broker.publisher.connected.is_set, 40, "the publisher to reconnect")
        ids = [broker.send(Pings, Ping(n=100 + n)) for n in range(10)]
        assert len(ids) == 10
        wait_until(lambda: proxy.connections == 1, 10, "one connection through the proxy")
        assert _queued(rabbit_broker) >= 11
    finally:
        broker.close()


def test_awaited_publishes_time_out_without_blocking_the_event_loop(
    rabbit_broker: RabbitBroker, proxy: TcpProxy, rabbit_url: str
) -> None:
    """50 tasks await `send_async` with 1 s timeouts while the connection is cut: each fails
    at its deadline, the loop keeps ticking meanwhile (nothing blocks it), and once the
    broker is back awaited publishes are confirmed and stored.

    Which error each gets depends on a race the test does not control: a publish written
    before the I/O thread saw the connection close gets `PublishTimeout` (it may be stored),
    one that found the connection gone gets `BrokerUnavailable` (nothing was sent)."""
    rabbit_broker.declare(Pings)
    broker = RabbitBroker(
        proxy.url(rabbit_url), namespace=rabbit_broker.namespace, confirm_timeout_s=1
    )

    async def scenario() -> tuple[list[BaseException | str], int]:
        ticks = 0
        done = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        results = await asyncio.gather(
            *(broker.send_async(Pings, Ping(n=n)) for n in range(50)), return_exceptions=True
        )
        done.set()
        await ticker
        return list(results), ticks

    try:
        broker.send(Pings, Ping(n=0))
        proxy.cut()
        results, ticks = asyncio.run(scenario())
        others = [
            result
            for result in results
            if not isinstance(result, PublishTimeout | BrokerUnavailable)
        ]
        assert others == [], others
        assert ticks >= 50, f"the loop ticked only {ticks} times in about a second"
        assert broker.publisher.running
        proxy.restore()
        wait_until(broker.publisher.connected.is_set, 40, "the publisher to reconnect")

        async def after() -> list[str]:
            return list(
                await asyncio.gather(*(broker.send_async(Pings, Ping(n=n)) for n in range(10)))
            )

        assert len(set(asyncio.run(after()))) == 10
        wait_until(lambda: _queued(rabbit_broker) >= 11, 10, "the confirmed messages")
    finally:
        broker.close()


def test_a_message_that_cannot_be_encoded_fails_only_its_own_caller(
    rabbit_broker: RabbitBroker,
) -> None:
    """A header value pika cannot encode: that caller gets PublishError at once with the
    reason, while another caller's message on the same connection is confirmed."""
    rabbit_broker.declare(Pings)
    publisher: Publisher = rabbit_broker.publisher
    queue = naming.queue_name(rabbit_broker.namespace, Pings.queue)
    unencodable: dict[str, Any] = {"x": {1, 2}}  # a set: no AMQP field type holds it
    bad = Outgoing("", queue, b"{}", pika.BasicProperties(message_id="bad", headers=unencodable))
    good = Outgoing("", queue, b'{"n": 1}', pika.BasicProperties(message_id="good"))
    with pytest.raises(PublishError, match="cannot be encoded") as raised:
        publisher.publish([bad])
    assert not isinstance(raised.value, PublishTimeout)
    assert publisher.publish([good]).errors == {}
    assert _queued(rabbit_broker) == 1


def test_too_long_names_fail_where_they_are_passed(rabbit_broker: RabbitBroker) -> None:
    """A correlation id over 255 bytes fails that call with a clear error; a topic is
    limited at definition to what still fits a delayed message's routing key."""
    rabbit_broker.declare(Pings)
    with pytest.raises(ValueError, match="255"):
        rabbit_broker.send(Pings, Ping(n=1), correlation_id="c" * 256)
    with pytest.raises(DefinitionError, match="197"):

        class TooLong(Message, topic="t" * 198):
            n: int

    class Longest(Message, topic="t" * 197):
        n: int

    class Far(Actor, queue="far"):
        seen = Recorder()

        @handler
        def on(self, msg: Longest) -> None:
            Far.seen.add(msg.n)

    with running(rabbit_broker, Far, threads=1):
        rabbit_broker.publish(Longest(n=1), delay=1)
        assert Far.seen.wait_for(1, timeout_s=10) == [1]


@pytest.fixture
def events_as_fanout(rabbit_broker: RabbitBroker, rabbit_url: str) -> Iterator[None]:
    """`{ns}.events` declared beforehand with another type (fanout, not topic)."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    try:
        connection.channel().exchange_declare(
            naming.events_exchange(rabbit_broker.namespace), "fanout", durable=True
        )
        yield
    finally:
        connection.close()


def test_a_refused_declaration_fails_callers_with_the_brokers_reason(
    rabbit_broker: RabbitBroker, events_as_fanout: None
) -> None:
    """The broker refuses the namespace's exchange: publish fails with its reason, not a
    timeout, and the channel is reopened with backoff, not in a tight loop."""
    with captured_logs() as logs:
        with pytest.raises(PublishError, match="inequivalent arg 'type'") as raised:
            rabbit_broker.publish(Ping(n=1))
        assert not isinstance(raised.value, PublishTimeout)
        threading.Event().wait(3)  # let the publisher retry in the background
    reopened = [event for event in logs if event["event"] == "publisher_channel_reopening"]
    assert 1 <= len(reopened) <= 5, reopened


def test_a_memory_alarm_blocks_publishing_and_says_so(
    rabbit_broker: RabbitBroker, rabbit_url: str
) -> None:
    """While the broker blocks publishers, a publish times out naming the alarm; once the
    alarm clears, publishing resumes on the same connection."""
    rabbit_broker.declare(Pings)
    broker = RabbitBroker(rabbit_url, namespace=rabbit_broker.namespace, confirm_timeout_s=2)
    try:
        broker.send(Pings, Ping(n=0))
        _eval("rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []}).")
        try:
            with pytest.raises(PublishTimeout, match="blocks publishing"):
                broker.send(Pings, Ping(n=1))
        finally:
            _eval("rabbit_alarm:clear_alarm({resource_limit, memory, node()}).")
        broker.send(Pings, Ping(n=2))
        assert _queued(rabbit_broker) >= 2
    finally:
        broker.close()


def _eval(expression: str) -> None:
    """Evaluate an Erlang expression on the test broker's node."""
    subprocess.run([*RABBITMQCTL, "eval", expression], check=True, capture_output=True, timeout=60)
