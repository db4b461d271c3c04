"""Every way of publishing takes the same options, checked once with the same errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

import leveret
from leveret.actors import Actor, Context, actor, handler
from leveret.schemas import InvalidArgument, Message
from leveret.services import MemoryBroker
from leveret.services.middleware import Middleware, Publishing
from leveret.services.testing import memory_broker


class Ping(Message, topic="tests.publish_options.ping"):
    n: int


class Pong(Message, topic="tests.publish_options.pong"):
    n: int


seen: list[tuple[str, int, str | None]] = []


class Pinged(Actor, queue="pinged"):
    @handler
    def on(self, msg: Ping, ctx: Context) -> None:
        seen.append(("ping", msg.n, ctx.correlation_id))
        ctx.send(Ponged, Pong(n=msg.n), timeout=5)
        ctx.publish(Pong(n=-msg.n), correlation_id="chosen", delay=0)


class Ponged(Actor, queue="ponged"):
    @handler
    def on(self, msg: Pong, ctx: Context) -> None:
        seen.append(("pong", msg.n, ctx.correlation_id))


@actor(queue="pinged_function")
def pinged_function(msg: Ping) -> None:
    seen.append(("function", msg.n, None))


@pytest.fixture
def broker() -> Iterator[MemoryBroker]:
    seen.clear()
    with memory_broker(Pinged, Ponged, pinged_function, eager=True) as broker:
        yield broker


CALLS: dict[str, Callable[..., Any]] = {
    "Broker.publish": lambda b, **o: b.publish(Ping(n=1), **o),
    "Broker.publish_many": lambda b, **o: b.publish_many([Ping(n=1)], **o),
    "Broker.send": lambda b, **o: b.send(Pinged, Ping(n=1), **o),
    "Broker.prepare": lambda b, **o: b.prepare(Ping(n=1), actor=Pinged, **o),
    "Actor.send": lambda b, **o: Pinged.send(Ping(n=1), **o),
    "function actor send": lambda b, **o: pinged_function.send(Ping(n=1), **o),
    "leveret.publish": lambda b, **o: leveret.publish(Ping(n=1), **o),
}

BAD: list[tuple[dict[str, Any], str]] = [
    ({"delay": 1, "eta": datetime(2030, 1, 1)}, "give delay or eta, not both"),
    ({"delay": -1}, "delay must be zero or positive"),
    ({"delay": timedelta(days=10_000)}, "longer than the maximum"),
    ({"eta": datetime(2030, 1, 1)}, "eta must be timezone-aware"),
    ({"timeout": 0}, "timeout must be a positive number of seconds"),
    ({"correlation_id": "x" * 256}, "correlation_id is 256 bytes"),
]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(("options", "error"), BAD)
def test_every_publishing_call_refuses_the_same_bad_options(
    broker: MemoryBroker, call: str, options: dict[str, Any], error: str
) -> None:
    with pytest.raises(InvalidArgument, match=error):
        CALLS[call](broker, **options)
    broker.join()
    assert seen == []


@pytest.mark.parametrize("call", CALLS)
def test_an_unknown_keyword_fails_the_call(broker: MemoryBroker, call: str) -> None:
    """A misspelt option is a TypeError at the call, not silently ignored."""
    with pytest.raises(TypeError, match="dleay"):
        CALLS[call](broker, dleay=5)
    assert seen == []


def test_actors_and_contexts_take_every_option(broker: MemoryBroker) -> None:
    """A handler's context takes a timeout and a correlation id of its own too."""
    Pinged.send(Ping(n=7), correlation_id="order-7", timeout=5)
    pinged_function.send(Ping(n=8), timeout=5)
    broker.join()
    assert sorted(seen, key=str) == sorted(
        [
            ("ping", 7, "order-7"),
            ("pong", 7, "order-7"),
            ("pong", -7, "chosen"),
            ("function", 8, None),
        ],
        key=str,
    )


class Recording(Middleware):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str | None, int]] = []

    def after_publish(self, publishing: Publishing, error: BaseException | None) -> None:
        self.calls.append(
            (
                publishing.operation,
                publishing.routing_key,
                publishing.count,
                publishing.correlation_id,
                len(publishing.message_ids),
            )
        )


def test_middleware_sees_each_call_once_sync_and_async() -> None:
    asyncio.run(_middleware_scenario())


async def _middleware_scenario() -> None:
    recording = Recording()
    broker = MemoryBroker(namespace="test", middleware=[recording])
    broker.declare(Pinged, Ponged)
    broker.publish(Ping(n=1), correlation_id="c")
    broker.publish_many([Ping(n=2), Pong(n=3)])
    broker.send(Pinged, Ping(n=4))
    broker.prepare(Pong(n=5))
    await broker.publish_async(Pong(n=6))
    await broker.send_async(Ponged, Pong(n=7), correlation_id="d")
    assert recording.calls == [
        ("publish", "tests.publish_options.ping", 1, "c", 1),
        ("publish", "", 2, None, 2),
        ("send", "test.pinged", 1, None, 1),
        ("prepare", "tests.publish_options.pong", 1, None, 1),
        ("publish", "tests.publish_options.pong", 1, None, 1),
        ("send", "test.ponged", 1, "d", 1),
    ]
