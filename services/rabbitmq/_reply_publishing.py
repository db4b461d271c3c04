"""Internal: a worker's answers to requests (asks), published on a connection of their own.

A handler's answer (`Reply`, from the request's `Outcome`) goes to the request's
``reply_to``, through the default exchange, before the request is acked (or dead-lettered).
Replies go out without confirms, not mandatory, transient: a caller that is gone is not
waited for, and one whose reply is lost gets `AskTimeout` at its deadline.

``reply_to`` comes from whoever published the request, so it is not trusted:

- only direct reply-to addresses (`wire.REPLY_TO_PREFIX`) are answered; any other is
  refused with a log line (``reply_refused``) and nothing is sent, so that a request naming
  an actor's queue (or any queue) never gets a message written there;
- a connection of its own, not a channel of the worker's: on RabbitMQ 3.10, a publish to
  ``amq.rabbitmq.reply-to.<a>.<b>`` whose ``<a>`` is not the encoded pid of a live node
  (``amq.rabbitmq.reply-to.a.b``, or a well-formed pid of an unknown node) crashes the
  channel's process in the broker, which closes the whole *connection* with
  ``541 INTERNAL_ERROR`` (seen empirically; ``amq.rabbitmq.reply-to.garbage``, without the
  second dot, and a real address with a wrong key are dropped silently, the channel stays
  open). On the worker's connection that would give back every delivery in flight, to be
  handled twice. Here it costs the replies written just after the hostile one (their
  callers time out); the connection is opened again and the next replies go out.

Whatever else goes wrong closes only the reply channel (``reply_not_sent``), and the next
reply opens it again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Literal

import pika
import pika.exceptions
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel

from leveret.schemas import wire
from leveret.services.delivery import Reply
from leveret.services.observability.logs import get_logger
from leveret.services.rabbitmq._confirms import CHANNEL_GONE
from leveret.services.rabbitmq._connection import DEFAULT_CONNECT_TIMEOUT_S, IOThread, describe
from leveret.services.rabbitmq._properties import SHORT_STRING_BYTES

log = get_logger("leveret.worker")

MAX_PENDING = 10_000
"""Replies held while the reply connection opens; past it the oldest are dropped (logged):
their callers time out."""
REOPEN_AFTER_S = 0.5
"""After the reply channel closed with replies waiting: when to open another."""
TRANSIENT: Literal[1] = 1


class ReplyPublisher(IOThread):
    """Publishes a worker's replies on a connection of its own, opened at the first reply.

    Args:
        url: AMQP URL (or several, commas between them).
        connect_timeout_s: How long one connection attempt may take.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        super().__init__(url, role="replier", connect_timeout_s=connect_timeout_s)
        self._start_lock = threading.Lock()
        # Any thread appends on the right; only the I/O thread takes from the left.
        self._pending: deque[Reply] = deque()
        self._wake_pending = False
        self._channel: Channel | None = None
        self._opening = False

    def publish(self, reply: Reply) -> None:
        """Send `reply` to its ``reply_to``, if that is a direct reply-to address (any
        thread; never blocks)."""
        to = reply.to
        if not to.startswith(wire.REPLY_TO_PREFIX) or len(to.encode()) > SHORT_STRING_BYTES:
            log.info(
                "reply_refused",
                reply_to=to[:100],
                correlation_id=reply.correlation_id[:64],
                actor=reply.actor,
                reason=f"not a direct reply-to address ({wire.REPLY_TO_PREFIX}…)",
            )
            return
        self._ensure_started()
        pending = self._pending
        pending.append(reply)
        if len(pending) > MAX_PENDING:
            lost = pending.popleft()
            log.warning(
                "reply_not_sent",
                correlation_id=lost.correlation_id[:64],
                actor=lost.actor,
                error=f"over {MAX_PENDING} replies wait for the reply connection",
            )
        if not self._wake_pending:
            self._wake_pending = True
            self.call_soon(self._flush)

    def close(self, timeout_s: float = 2.0) -> None:
        """Send what waits (for at most `timeout_s`), then close the connection."""
        if not self.running:
            return
        with self.state_changed:
            self.state_changed.wait_for(
                lambda: not self._pending or not self.running or self.crashed is not None,
                timeout_s,
            )
        self.stop()

    def _ensure_started(self) -> None:
        if self.running:
            return
        with self._start_lock:
            if not self.running:
                self._wake_pending = False  # a wake-up the ended thread never ran
                self.start()

    # I/O thread -------------------------------------------------------------------------

    def on_connected(self, connection: SelectConnection) -> None:
        if self._pending:
            self._open(connection)

    def on_disconnected(self, reason: BaseException) -> None:
        self._channel = None
        self._opening = False
        if not self._stopping:
            log.info(
                "reply_connection_lost",
                error=describe(reason),
                hint="replies written just before may be lost; a request whose reply_to "
                "RabbitMQ cannot decode (a broken or hostile client) closes it",
            )

    def _flush(self) -> None:
        self._wake_pending = False
        channel = self._channel
        if channel is None or not channel.is_open:
            connection = self.connection
            if connection is not None and connection.is_open:
                self._open(connection)
            return  # the connection (or channel) opens, then sends what waits
        pending = self._pending
        while pending:
            reply = pending.popleft()
            try:
                channel.basic_publish("", reply.to, reply.body, _properties(reply))
            except CHANNEL_GONE:
                pending.appendleft(reply)  # nothing written: on the next channel
                self._channel = None
                self._io_later()
                break
            except Exception as exc:  # noqa: BLE001  # this reply only: the channel is renewed
                log.info(
                    "reply_not_sent",
                    correlation_id=reply.correlation_id[:64],
                    actor=reply.actor,
                    error=f"{type(exc).__name__}: {exc}",
                )
                self._channel = None
                if channel.is_open:
                    channel.close()
                if pending:
                    self._io_later()
                break
        self.notify_state()

    def _io_later(self) -> None:
        self.call_later(REOPEN_AFTER_S, self._flush)

    def _open(self, connection: SelectConnection) -> None:
        if self._opening:
            return
        self._opening = True
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Channel) -> None:
        self._opening = False
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        self._flush()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is self._channel:
            self._channel = None
        if not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            log.info("reply_not_sent", error=f"the reply channel closed: {describe(reason)}")
        if self._pending and not self._stopping:
            self._io_later()


def _properties(reply: Reply) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=wire.CONTENT_TYPE,
        type=reply.topic or None,
        message_id=reply.message_id,
        correlation_id=reply.correlation_id,
        timestamp=int(time.time()),
        delivery_mode=TRANSIENT,
        headers=reply.wire_headers(),
    )
