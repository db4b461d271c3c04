"""FastStream's side of the ask scenario: ``faststream run bench.asking.faststream_app:app``.

The responder is a subscriber on a quorum queue (prefetch 100, as the peers' drain) that
returns a pydantic model: FastStream publishes it to the request's ``reply_to``. Callers
use ``RabbitBroker.request`` (FastStream 0.5+: direct reply-to; one request at a time per
broker, under its own lock), and read the answer as the model.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any

from faststream import FastStream
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue
from pydantic import BaseModel

from bench.common import PAYLOAD

ASK_TIMEOUT_S = 10.0


class PriceAsked(BaseModel):
    """The request."""

    seq: int
    payload: str


class Price(BaseModel):
    """The answer."""

    seq: int
    cents: int


def queue_of(name: str) -> RabbitQueue:
    """The responder's queue: durable, quorum."""
    return RabbitQueue(name, durable=True, queue_type=QueueType.QUORUM)


broker = RabbitBroker(
    os.environ.get("BENCH_ASK_URL", "amqp://"),
    default_channel=Channel(prefetch_count=100),
)
app = FastStream(broker)


@broker.subscriber(queue_of(os.environ.get("BENCH_ASK_QUEUE", "bench_faststream_ask")))
async def quote(msg: PriceAsked) -> Price:
    return Price(seq=msg.seq, cents=990)


class FastStreamAsyncCaller:
    """The callers of one event loop: a connected `RabbitBroker` of their own."""

    def __init__(self, client: RabbitBroker, queue: str) -> None:
        self.client = client
        self.queue = queue

    @classmethod
    async def open(cls, url: str, queue: str) -> FastStreamAsyncCaller:
        client = RabbitBroker(url)
        await client.connect()
        return cls(client, queue)

    async def ask(self, seq: int) -> None:
        response = await self.client.request(
            PriceAsked(seq=seq, payload=PAYLOAD), queue=self.queue, timeout=ASK_TIMEOUT_S
        )
        answer = Price.model_validate(await response.decode())
        if answer.seq != seq:
            raise RuntimeError(f"the answer to request {seq} is the answer to {answer.seq}")

    async def close(self) -> None:
        await self.client.stop()


class FastStreamLoop:
    """FastStream for threads: one event loop thread with a connected broker, to which
    each thread hands its request (``run_coroutine_threadsafe``), as sync code calls an
    async-only client."""

    def __init__(self, url: str, queue: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="faststream-loop")
        self.thread.daemon = True
        self.thread.start()
        self.caller = self.run(FastStreamAsyncCaller.open(url, queue))

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(ASK_TIMEOUT_S + 5)

    def ask(self, seq: int) -> None:
        self.run(self.caller.ask(seq))

    def close(self) -> None:
        try:
            self.run(self.caller.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
