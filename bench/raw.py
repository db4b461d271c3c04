"""The raw-pika baseline: the same work as Leveret, written directly against pika.

Same queue type and prefetch, persistent JSON messages with a message id, a topic exchange,
`mandatory` publishes, manual acks and `json.loads` of every body in the consumer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.select_connection import SelectConnection
from pika.spec import Basic

from bench.common import (
    TOPIC,
    Clock,
    Settings,
    pace,
    percentile,
    raw_body,
    raw_message_id,
    wait_until,
)


def _properties() -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        type=TOPIC,
        message_id=raw_message_id(),
        timestamp=int(time.time()),
        delivery_mode=2,
        headers={"x-leveret-attempt": 1},
    )


class RawBench:
    """Runs each scenario on raw pika, on the queue ``{namespace}.raw-{queue_type}``."""

    def __init__(self, settings: Settings, queue_type: str) -> None:
        self.settings = settings
        self.params = pika.URLParameters(settings.url)
        self.queue = f"{settings.namespace}.raw-{queue_type}"
        self.exchange = f"{settings.namespace}.raw-{queue_type}.events"
        with self._channel() as channel:
            channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": queue_type})
            channel.queue_bind(self.queue, self.exchange, routing_key=TOPIC)

    def _channel(self) -> _Blocking:
        return _Blocking(self.params)

    def _consume(
        self, on_message: Callable[..., None], ready: threading.Event | None = None
    ) -> None:
        """Consume the queue with the run's prefetch until `on_message` stops consuming;
        `ready` is set once the consumer is in place."""
        with self._channel() as channel:
            channel.basic_qos(prefetch_count=self.settings.prefetch)
            channel.basic_consume(self.queue, on_message)
            if ready is not None:
                ready.set()
            channel.start_consuming()

    def purge(self) -> None:
        """Empty the queue."""
        with self._channel() as channel:
            channel.queue_purge(self.queue)

    def publish_single(self) -> Clock:
        """One message at a time on a BlockingConnection, each waiting for its confirm."""
        clock = Clock(self.settings.single)
        with self._channel() as channel:
            channel.confirm_delivery()
            clock.start()
            for seq in range(clock.count):
                channel.basic_publish("", self.queue, raw_body(seq), _properties(), mandatory=True)
            clock.stop()
        self.purge()
        return clock

    def publish_many(self) -> Clock:
        """Pipelined confirms on a SelectConnection, at most `window` unconfirmed."""
        clock = _Pipelined(
            self.params, self.exchange, self.settings.many, self.settings.window
        ).run()
        self.purge()
        return clock

    def fill(self, count: int) -> None:
        """Put `count` messages in the queue (not timed)."""
        _Pipelined(self.params, self.exchange, count, self.settings.window).run()

    def drain(self) -> Clock:
        """Connect, consume `drain` waiting messages (json.loads, ack each); msg/s."""
        clock = Clock(self.settings.drain)
        count = clock.count
        self.fill(count)
        handled = 0

        def on_message(channel: Any, method: Any, _props: Any, body: bytes) -> None:
            nonlocal handled
            json.loads(body)
            channel.basic_ack(method.delivery_tag)
            handled += 1
            if handled >= count:
                channel.stop_consuming()

        clock.start()
        self._consume(on_message)
        clock.stop()
        return clock

    def latency(self) -> tuple[float, float]:
        """p50 and p99 (ms) at a fixed rate: a consumer thread, a confirming publisher."""
        count = self.settings.latency
        samples: list[float] = []
        ready = threading.Event()

        def consume() -> None:
            def on_message(channel: Any, method: Any, _props: Any, body: bytes) -> None:
                samples.append(time.time() - json.loads(body)["sent_at"])
                channel.basic_ack(method.delivery_tag)
                if len(samples) >= count:
                    channel.stop_consuming()

            self._consume(on_message, ready)

        consumer = threading.Thread(target=consume, name="raw-consumer", daemon=True)
        consumer.start()
        ready.wait(30)
        with self._channel() as channel:
            channel.confirm_delivery()
            for seq in pace(self.settings.rate, count):
                channel.basic_publish("", self.queue, raw_body(seq), _properties(), mandatory=True)
        wait_until(lambda: len(samples) >= count, 30, "the raw latency run")
        consumer.join(10)
        return percentile(samples, 0.50) * 1000, percentile(samples, 0.99) * 1000

    def close(self) -> None:
        """Delete the queue and the exchange."""
        with self._channel() as channel:
            channel.queue_delete(self.queue)
            channel.exchange_delete(self.exchange)


class _Blocking:
    """A BlockingConnection channel, closed on exit."""

    def __init__(self, params: pika.URLParameters) -> None:
        self.connection = pika.BlockingConnection(params)

    def __enter__(self) -> Any:
        return self.connection.channel()

    def __exit__(self, *_exc: object) -> None:
        if self.connection.is_open:
            self.connection.close()


class _Pipelined:
    """Publishes `count` messages with confirms on a SelectConnection, a window in flight.

    Each body is encoded (json.dumps) as it is published, as Leveret's publish_many does.
    """

    def __init__(self, params: pika.URLParameters, exchange: str, count: int, window: int) -> None:
        self.params = params
        self.exchange = exchange
        self.count = count
        self.window = window
        self.sent = 0
        # Tags up to `acked_upto` are confirmed (multiple=True acks), and so are `singles`.
        self.acked_upto = 0
        self.singles: set[int] = set()
        self.clock = Clock(count)
        self.error: str | None = None
        self.channel: Any = None

    def run(self) -> Clock:
        """Connect, publish everything, wait for every confirm; return the time it took."""
        connection = SelectConnection(
            self.params,
            on_open_callback=lambda conn: conn.channel(on_open_callback=self._on_channel),
            on_open_error_callback=lambda _conn, exc: self._fail(f"cannot connect: {exc}"),
            on_close_callback=lambda _conn, _reason: connection.ioloop.stop(),
        )
        self.connection = connection
        connection.ioloop.start()
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.clock

    @property
    def confirmed(self) -> int:
        return self.acked_upto + len(self.singles)

    def _fail(self, error: str) -> None:
        self.error = error
        if self.connection.is_open:
            self.connection.close()
        else:
            self.connection.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._start())

    def _start(self) -> None:
        self.clock.start()
        self._publish()

    def _publish(self) -> None:
        channel = self.channel
        while self.sent < self.count and self.sent - self.confirmed < self.window:
            channel.basic_publish(
                self.exchange, TOPIC, raw_body(self.sent), _properties(), mandatory=True
            )
            self.sent += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if not isinstance(method, Basic.Ack):
            self._fail(f"broker nacked {method.delivery_tag}")
            return
        tag = method.delivery_tag
        if method.multiple:
            self.acked_upto = max(self.acked_upto, tag)
            self.singles = {single for single in self.singles if single > tag}
        else:
            self.singles.add(tag)
        if self.confirmed >= self.count:
            self.clock.stop()
            self.connection.close()
        else:
            self._publish()
