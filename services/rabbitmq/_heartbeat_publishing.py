"""Internal: a worker's heartbeats, published on a channel of their own (I/O thread).

`leveret status` learns which workers run from the heartbeats they publish to the
namespace's (non-durable, fan-out) heartbeats exchange. They go out without confirms, not
mandatory, transient: a lost one is replaced by the next. The channel declares the exchange
once when it opens, so a broker restart or a deleted exchange costs one lost heartbeat;
whatever goes wrong only closes this channel, and the next heartbeat opens it again.
"""

from __future__ import annotations

import time
from typing import Any

import pika
import pika.exceptions
from pika.channel import Channel

from leveret.services.observability.logs import get_logger
from leveret.services.rabbitmq._connection import IO, describe

log = get_logger("leveret.worker")

HEARTBEAT_RETRY_S = 60.0
"""After the broker refused the heartbeats exchange, how long until the next try: a refusal
(no permission, arguments that differ) lasts until an operator acts, so a try a minute keeps
the log quiet and still sees the fix within a minute."""


class HeartbeatPublisher:
    """Publishes a worker's heartbeats on a channel of the worker's connection.

    Args:
        io: The worker's I/O thread (its connection).
        exchange: The namespace's heartbeats exchange.
    """

    def __init__(self, io: IO, exchange: str) -> None:
        self._io = io
        self.exchange = exchange
        self._channel: Channel | None = None
        self._pending: bytes | None = None  # the latest, while the channel opens
        self._paused_until = 0.0  # monotonic: refused, no new channel before
        self._refused = False

    def publish(self, body: bytes) -> None:
        """Publish one heartbeat, opening the channel first if need be (I/O thread)."""
        channel = self._channel
        if channel is None or not channel.is_open:
            if time.monotonic() < self._paused_until:
                return  # the broker refused the exchange: try again later, quietly
            if self._pending is None:
                connection = self._io.connection
                if connection is None or not connection.is_open:
                    return
                connection.channel(on_open_callback=self._on_open)
            self._pending = body
            return
        try:
            channel.basic_publish(
                self.exchange,
                "",
                body,
                pika.BasicProperties(
                    content_type="application/json", delivery_mode=1, type="leveret.heartbeat"
                ),
            )
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.info("heartbeat_not_sent", error=describe(exc))

    def reset(self) -> None:
        """The connection is gone, and the channel with it."""
        self._channel = None
        self._pending = None

    def _on_open(self, channel: Channel) -> None:
        channel.add_on_close_callback(self._on_closed)

        def declared(_frame: Any) -> None:
            self._refused = False
            self._channel = channel
            pending, self._pending = self._pending, None
            if pending is not None:
                self.publish(pending)

        channel.exchange_declare(
            self.exchange,
            exchange_type="fanout",
            durable=False,
            callback=declared,
        )

    def _on_closed(self, channel: Channel, reason: BaseException) -> None:
        if self._channel is channel or self._channel is None:
            self._channel = None
            self._pending = None
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            # Refused (no permission on the exchange, arguments differ): every heartbeat
            # would be refused the same way. One warning, then a try a minute.
            self._paused_until = time.monotonic() + HEARTBEAT_RETRY_S
            if not self._refused:
                log.warning(
                    "heartbeats_refused",
                    error=describe(reason),
                    retry_in_s=HEARTBEAT_RETRY_S,
                    hint="leveret status will not see this worker; check the user's "
                    f"permissions on the exchange {self.exchange}",
                )
            self._refused = True
        elif not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            log.info("heartbeat_channel_closed", error=describe(reason))
