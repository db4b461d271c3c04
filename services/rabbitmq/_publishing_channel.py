"""Internal: the publisher's channel, on the I/O thread: messages out, confirms back.

The I/O thread takes the messages callers put in the inbox and publishes them with
`mandatory` on a channel in confirm mode, a slice at a time (`flush`), and settles each
message in its caller's batch as its confirm comes back. A nacked message is sent again
after a pause, and the channel that nacked it is replaced (`_channel_renewal`). The channel
opens on every connection and first declares the namespace's topology; when the broker
closes it (it refused what was done on it), the callers get the reason and it reopens with
backoff. After a lost channel, what it had not had confirmed is sent again on the next one.

Callers (`_publisher`) append to the inbox, `wake` the I/O thread and read why messages
wait; everything else runs on the I/O thread, or on a caller's thread the I/O loop is lent
to (`_loop_lending`), never on two at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import pika
import pika.exceptions
import pika.frame
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.spec import Basic, Connection

from leveret.services.middleware import MiddlewareChain
from leveret.services.observability.logs import get_logger
from leveret.services.rabbitmq import _properties as wire_properties
from leveret.services.rabbitmq._channel_renewal import (
    REOPEN_AFTER_RENEWAL_S,
    ChannelRenewal,
    reopen_backoff,
)
from leveret.services.rabbitmq._confirms import CHANNEL_GONE, Confirms
from leveret.services.rabbitmq._connection import IOThread, describe
from leveret.services.rabbitmq._declare import declare_async
from leveret.services.rabbitmq._outgoing import Outgoing, abandoned
from leveret.services.rabbitmq._silence_watch import SilenceWatch
from leveret.services.topology.declarations import Step

log = get_logger("leveret.publisher")

# Messages published per turn of the I/O loop, and at most unconfirmed (see `flush`).
FLUSH_SLICE = 256
FLUSH_WINDOW = 1000
NACK_PAUSE_FIRST_S = 0.05
"""The pause before a nacked message is sent again; it doubles with each nack..."""
NACK_PAUSE_MAX_S = 2.0
"""...up to this."""


class PublishingChannel:
    """The channel messages go out on and their confirms come back on.

    I/O thread only, but for `wake`, `idle` and what callers read to say why messages
    wait: `ready`, `refused`, `blocked`.

    Args:
        io: The publisher: its connection, timers, and a `call_soon` that wakes its I/O
            thread when parked.
        inbox: The messages callers hand over: they append on the right, only the I/O
            thread takes from the left (and puts back on the left after a lost channel).
        declare_on_connect: Declared on each new channel before anything is published.
        after_ready: Called once the channel is ready and the inbox flushed.
        no_connection: Called when a flush finds no connection to publish on.
        middleware: Its ``publish_confirmed`` sees each confirm (metrics).
    """

    def __init__(
        self,
        io: IOThread,
        inbox: deque[Outgoing],
        declare_on_connect: list[Step],
        *,
        after_ready: Callable[[], None],
        no_connection: Callable[[], None],
        middleware: MiddlewareChain | None = None,
    ) -> None:
        self._io = io
        self._inbox = inbox
        self._declare_on_connect = declare_on_connect
        self._after_ready = after_ready
        self._no_connection = no_connection
        self.middleware = middleware
        """Its ``publish_confirmed`` sees each confirm (metrics), on the I/O thread."""
        self._wake_pending = False
        self.ready = False
        """Whether the channel is open and its declarations made: messages go out."""
        self.refused: str | None = None
        """The broker refused our declarations: why."""
        self.blocked: str | None = None
        """The broker blocks publishing (an alarm): why."""
        self._channel_backoff = reopen_backoff()
        self._channel: Channel | None = None
        self._unconfirmed: Confirms[Outgoing] = Confirms()  # on `_channel`
        self._pausing: set[Outgoing] = set()  # nacked, waiting to be sent again
        self._renewal = ChannelRenewal(io, role="publisher", reason="the broker nacked a message")
        # The channel to replace after a nack: nothing more is published on it, and it
        # closes once its outstanding confirms are in (see `_renew_channel_after_nack`).
        self._draining: Channel | None = None
        self._silence = SilenceWatch(
            io,
            outstanding=lambda: len(self._unconfirmed),
            blocked=lambda: self.blocked is not None,
        )

    # Any thread ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Have the I/O thread `flush` the inbox, unless it is about to already."""
        if not self._wake_pending:
            self._wake_pending = True
            self._io.call_soon(self.flush)

    def idle(self) -> bool:
        """Whether nothing is in flight: the channel ready, no confirm outstanding, nothing
        nacked waiting to be sent again."""
        return self.ready and self._draining is None and not self._unconfirmed and not self._pausing

    # I/O thread ---------------------------------------------------------------------------

    def open(self, connection: SelectConnection) -> None:
        """The connection is open (first time or after a reconnect): open the channel."""
        self.blocked = None
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_blocked(
        self, _connection: SelectConnection, frame: pika.frame.Method[Connection.Blocked]
    ) -> None:
        self.blocked = str(frame.method.reason or "blocked")
        log.warning("publisher_blocked", reason=self.blocked, url=self._io.safe_url)
        self._io.notify_state()

    def _on_unblocked(
        self, _connection: SelectConnection, _frame: pika.frame.Method[Connection.Unblocked]
    ) -> None:
        log.info("publisher_unblocked", url=self._io.safe_url)
        self.blocked = None

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._declare_base())

    def _declare_base(self) -> None:
        assert self._channel is not None
        declare_async(self._channel, self._declare_on_connect, self._on_ready)

    def _on_ready(self) -> None:
        self.ready = True
        if self.refused is not None:
            log.info("publisher_declarations_accepted", url=self._io.safe_url)
        self.refused = None
        self._channel_backoff.reset()
        self._io.notify_state()
        self.flush()
        self._after_ready()

    def flush(self) -> None:
        """Publish the next slice of the inbox: at most `FLUSH_SLICE` messages, and no
        more than `FLUSH_WINDOW` unconfirmed; the next wake or confirm publishes more."""
        self._wake_pending = False
        if self.refused is not None:
            self._fail_waiting(self.refused)
            return
        channel = self._channel
        if not self.ready or channel is None or channel is self._draining:
            if self._io.connection is None:
                self._no_connection()
            return
        inbox = self._inbox
        # Publish a slice, then let the I/O loop run: pika writes to the socket and reads
        # confirms only between callbacks, so a big batch published in one go would reach
        # the broker all at once at the end instead of being confirmed while we encode.
        # At most FLUSH_WINDOW stay unconfirmed (as a raw pika pipeline would do): the rest
        # waits in the inbox and `_on_confirm` flushes again as confirms come back.
        unconfirmed = self._unconfirmed
        room = min(len(inbox), FLUSH_SLICE, FLUSH_WINDOW - len(unconfirmed))
        dropped = 0
        stamps = wire_properties.Timestamps()
        # Looked up once per slice, not once per message.
        publish = channel.basic_publish
        sent = unconfirmed.sent
        observer = self.middleware
        for _ in range(room):
            item = inbox.popleft()
            batch = item.batch
            # Marked before the caller's `abandoned` is read: a caller that gives up reads it
            # after setting `abandoned`, so one of the two always sees the other's mark (it
            # tells BrokerUnavailable, nothing sent, from PublishTimeout; see `_conclude`).
            was_written = item.written
            item.written = True
            if batch is not None and batch.abandoned:
                item.written = was_written
                dropped += 1  # its caller got PublishError: never send it late
                continue
            try:
                publish(
                    item.exchange,
                    item.routing_key,
                    item.body,
                    item.wire_properties(stamps),
                    mandatory=True,
                )
            except CHANNEL_GONE as exc:
                item.written = was_written
                inbox.appendleft(item)
                log.warning("publish_deferred", error=describe(exc))
                return
            except Exception as exc:  # noqa: BLE001  # this message cannot be encoded
                # pika encodes the whole message before writing any of it: nothing was
                # sent, and only this message's caller is told.
                _settle_closed(item, f"message cannot be encoded: {type(exc).__name__}: {exc}")
                continue
            if observer is not None:
                item.sent_at = time.perf_counter()
            sent(item)
        if dropped:
            log.warning(
                "publish_abandoned",
                dropped=dropped,
                reason="the caller got PublishError (no confirm in time); not sent",
            )
        silence = self._silence
        if not silence.watching and unconfirmed:
            silence.start()
        if inbox and len(self._unconfirmed) < FLUSH_WINDOW:
            self.wake()

    def _on_return(
        self,
        _channel: Channel,
        method: Basic.Return,
        properties: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        self._unconfirmed.returned(
            properties.message_id or "", f"{method.reply_code} {method.reply_text}"
        )

    def _on_confirm(self, frame: pika.frame.Method[Basic.Ack | Basic.Nack]) -> None:
        self._unconfirmed.confirmed(frame.method, self._settle)
        if self._draining is not None:
            self._renewal.close_if_drained(self._draining, self._unconfirmed)
        elif self._inbox and not self._wake_pending:
            self.flush()  # room again: publish more at once, as a raw pipeline does

    def _settle(self, item: Outgoing, ok: bool, returned: str | None) -> None:
        error: str | None = None
        if not ok:
            # Refused, not stored (a quorum queue's leader changing, an internal error): send
            # it again, same message id, until stored or its caller stops waiting. A
            # caller is never told a message is stored that was not.
            self._observe(item, ok=False, returned=returned is not None)
            self._send_again_later(item)
            return
        if returned is not None and item.unroutable_is_error:
            error = (
                f"no queue {item.routing_key!r} to deliver message {item.message_id} to "
                f"({returned}); declare the actor first (leveret declare, or a worker)"
            )
        # Before the batch is settled: its caller, woken by it, runs the after-publish
        # hooks, which must come after this message's confirm.
        if self.middleware is not None:
            self._observe(item, ok=True, returned=returned is not None)
        assert item.batch is not None
        item.batch.settle(item.index, error, returned is not None)

    def _observe(self, item: Outgoing, *, ok: bool, returned: bool) -> None:
        middleware = self.middleware
        if middleware is not None:  # a hook that raises is logged by the chain
            middleware.publish_confirmed(ok, returned, time.perf_counter() - item.sent_at)

    def _send_again_later(self, item: Outgoing) -> None:
        """A nacked message goes back to the inbox after a pause growing with its nacks."""
        batch = item.batch
        assert batch is not None
        item.nacks += 1
        batch.nacks += 1
        batch.last_nack = f"the broker refused (nack) message {item.message_id}"
        delay_s = min(NACK_PAUSE_MAX_S, NACK_PAUSE_FIRST_S * 2 ** (item.nacks - 1))
        log.warning(
            "publish_nacked",
            message_id=item.message_id,
            nacks=item.nacks,
            retry_in_s=round(delay_s, 3),
        )

        def send_again() -> None:
            if item not in self._pausing:
                return  # settled meanwhile (the publisher stopped)
            self._pausing.discard(item)
            if batch.abandoned or batch.settled[item.index]:
                return  # its caller stopped waiting: never send it late
            self._inbox.append(item)
            self.wake()

        self._pausing.add(item)
        self._io.call_later(delay_s, send_again)
        self._renew_channel_after_nack()

    def _renew_channel_after_nack(self) -> None:
        """Replace the channel after a nack (see `_channel_renewal`): nothing more is
        published on it, and a new one opens once it closed (`_on_channel_closed`)."""
        channel = self._channel
        if channel is None or not channel.is_open or self._draining is not None:
            return
        if self._renewal.due():
            self._draining = channel
            self._renewal.drain(channel, self._unconfirmed)

    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        was_ready = self.ready
        self._channel = None
        self.ready = False
        self._draining = None
        in_flight = self._unconfirmed.in_flight()
        self._forget_channel()
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            # The broker refused what we did: publishing or declaring the same at once again
            # would loop, so the callers get the reason and the channel reopens with backoff.
            if not was_ready:
                self.refused = (
                    f"the broker at {self._io.safe_url} refused the namespace's declarations: "
                    f"{describe(reason)}"
                )
                log.error("publisher_declarations_refused", error=describe(reason))
                self._io.notify_state()
            for item in in_flight:
                _settle_closed(item, f"channel closed by broker: {describe(reason)}")
            if self.refused is not None:
                self._fail_waiting(self.refused)
            delay_s = self._channel_backoff.next_delay_s()
            log.warning("publisher_channel_reopening", retry_in_s=round(delay_s, 2))
            self._io.call_later(delay_s, self._reopen_channel)
        else:
            in_flight = [item for item in in_flight if not abandoned(item)]
            self._inbox.extendleft(reversed(in_flight))
            for item in in_flight:
                item.written = True
            connection = self._io.connection
            if connection is not None and connection.is_open and not self._io.stopping:
                # Closed by us (renewed after a nack): a new channel at once. (A lost
                # connection opens its new channel when it reconnects.)
                self._io.call_later(REOPEN_AFTER_RENEWAL_S, self._reopen_channel)

    def _reopen_channel(self) -> None:
        connection = self._io.connection
        if self._channel is None and connection is not None and connection.is_open:
            connection.channel(on_open_callback=self._on_channel_open)

    def drop_abandoned(self) -> None:
        """Take the messages of callers that gave up out of the inbox, now (I/O thread).

        One turn of the deque: each message is taken from the left and put back on the
        right unless abandoned. Callers appending meanwhile keep their own order.
        """
        inbox = self._inbox
        dropped = 0
        for _ in range(len(inbox)):
            item = inbox.popleft()
            if abandoned(item):
                dropped += 1
            else:
                inbox.append(item)
        if dropped:
            log.warning(
                "publish_abandoned",
                dropped=dropped,
                reason="the caller got PublishError (no confirm in time); not sent",
            )

    def _fail_waiting(self, reason: str) -> None:
        """Settle every message waiting to be sent with `reason` (I/O thread only)."""
        inbox = self._inbox
        while inbox:
            _settle_closed(inbox.popleft(), reason)

    def _forget_channel(self) -> None:
        self._unconfirmed = Confirms()

    def lost(self, reason: BaseException) -> None:
        """The connection is gone, and the channel with it."""
        if self._channel is not None:
            self._on_channel_closed(self._channel, reason)
        self._silence.stop()

    def fail_all(self, reason: str) -> None:
        """Settle every message not confirmed yet with `reason`: in flight, nacked and
        pausing, or waiting to be sent."""
        in_flight = self._unconfirmed.in_flight()
        self._forget_channel()
        for item in in_flight:
            _settle_closed(item, reason)
        pausing, self._pausing = self._pausing, set()
        for item in pausing:
            _settle_closed(item, reason)
        self._fail_waiting(reason)

    def forget(self) -> None:
        """The I/O loop died: its channel and timers are gone with it."""
        self._channel = None
        self.ready = False
        self._draining = None
        self._silence.stop()


def _settle_closed(item: Outgoing, reason: str) -> None:
    assert item.batch is not None
    item.batch.settle(item.index, reason, unroutable=False)
