"""Raw pika's side of the ask scenario: what a competent pika user writes for request/reply.

- The responder (``python -m bench.asking.raw URL QUEUE``, a process of its own): one
  ``BlockingConnection`` consuming the quorum queue with prefetch 100, ``json.loads`` of
  the request, the answer published to its ``reply_to`` with its correlation id (no
  confirm, as direct reply-to answers are usually sent), then the ack.
- The synchronous caller: a ``BlockingConnection`` of its own (pika's connections are not
  thread-safe; pika's documentation says a connection per thread), consuming
  ``amq.rabbitmq.reply-to`` (direct reply-to: no queue per call) and publishing each
  request persistent, ``mandatory``, with publisher confirms, then waiting on its socket
  for the answer whose correlation id is the request's.
- The asyncio caller: aio-pika (installed with FastStream, the ``bench`` extra), one
  connection and channel with confirms, one future per request in flight, routed by
  correlation id.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import pika

from bench.common import PAYLOAD, raw_message_id

REPLY_TO = "amq.rabbitmq.reply-to"
ASK_TIMEOUT_S = 10.0
TOPIC = "bench.price_asked"
PREFETCH = 100


def _request_body(seq: int) -> bytes:
    return json.dumps({"seq": seq, "payload": PAYLOAD}).encode()


def _check(body: bytes, seq: int) -> None:
    answer = json.loads(body)
    if answer.get("seq") != seq:
        raise RuntimeError(f"the answer to request {seq} is {answer!r}")


class RawCaller:
    """One thread's caller: a ``BlockingConnection`` and its channel, on direct reply-to."""

    def __init__(self, url: str, queue: str) -> None:
        self.queue = queue
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
        self.waiting = ""
        self.answer: bytes | None = None

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        if properties.correlation_id == self.waiting:
            self.answer = body

    def ask(self, seq: int) -> None:
        """Publish the request (returns on its confirm), then wait for its answer."""
        self.waiting = raw_message_id()
        self.answer = None
        properties = pika.BasicProperties(
            content_type="application/json",
            type=TOPIC,
            message_id=self.waiting,
            correlation_id=self.waiting,
            reply_to=REPLY_TO,
            timestamp=int(time.time()),
            delivery_mode=2,
        )
        self.channel.basic_publish("", self.queue, _request_body(seq), properties, mandatory=True)
        deadline = time.monotonic() + ASK_TIMEOUT_S
        while self.answer is None:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError(f"no answer to request {seq}")
            self.connection.process_data_events(time_limit=left_s)
        _check(self.answer, seq)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


class RawAsyncCaller:
    """The callers of one event loop: an aio-pika connection and channel (with confirms)
    consuming direct reply-to, a future per request in flight."""

    def __init__(self, connection: Any, channel: Any, queue: str) -> None:
        self.connection = connection
        self.channel = channel
        self.queue = queue
        self.waiting: dict[str, asyncio.Future[bytes]] = {}

    @classmethod
    async def open(cls, url: str, queue: str) -> RawAsyncCaller:
        import aio_pika

        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        caller = cls(connection, channel, queue)
        replies = await channel.declare_queue(REPLY_TO, passive=True)
        await replies.consume(caller._on_reply, no_ack=True)
        return caller

    async def _on_reply(self, message: Any) -> None:
        future = self.waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    async def ask(self, seq: int) -> None:
        """Publish the request (awaits its confirm), then await its answer."""
        import aio_pika

        message_id = raw_message_id()
        future = asyncio.get_running_loop().create_future()
        self.waiting[message_id] = future
        try:
            await self.channel.default_exchange.publish(
                aio_pika.Message(
                    _request_body(seq),
                    content_type="application/json",
                    type=TOPIC,
                    message_id=message_id,
                    correlation_id=message_id,
                    reply_to=REPLY_TO,
                    timestamp=time.time(),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=self.queue,
                mandatory=True,
            )
            body = await asyncio.wait_for(future, ASK_TIMEOUT_S)
        finally:
            self.waiting.pop(message_id, None)
        _check(body, seq)

    async def close(self) -> None:
        await self.connection.close()


def aio_pika_installed() -> bool:
    """Whether aio-pika can be imported (it comes with FastStream's ``rabbit`` extra)."""
    try:
        import aio_pika  # noqa: F401
    except ImportError:
        return False
    return True


def respond(url: str, queue: str) -> None:
    """Answer every request on `queue` until SIGTERM (the queue is declared here)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.basic_qos(prefetch_count=PREFETCH)

    def on_request(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        request = json.loads(body)
        answer = json.dumps({"seq": request["seq"], "cents": 990}).encode()
        if properties.reply_to:
            channel.basic_publish(
                "",
                properties.reply_to,
                answer,
                pika.BasicProperties(
                    content_type="application/json", correlation_id=properties.correlation_id
                ),
            )
        channel.basic_ack(method.delivery_tag)

    def stop(_signum: int, _frame: object) -> None:
        channel.stop_consuming()

    signal.signal(signal.SIGTERM, stop)
    channel.basic_consume(queue, on_request)
    channel.start_consuming()
    connection.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.asking.raw URL QUEUE")
    respond(sys.argv[1], sys.argv[2])
