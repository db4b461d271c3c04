"""Internal: `RabbitAsking`, the caller's side of request/reply on RabbitMQ.

One connection per process (per transport), opened at the first request; after
`os.fork()` the child opens its own. On it, one channel in confirm mode consumes RabbitMQ's
direct reply-to (``amq.rabbitmq.reply-to``: no queue, auto ack) before any request is
published on it, as direct reply-to requires: the broker gives each request that channel's
own reply address, and a reply to it comes back on that channel only.

```text
caller's thread: request(item, sink)   registers the sink by the request's message id,
                                       queues the item, wakes the I/O thread (never blocks)
I/O thread:      publish: mandatory, reply_to amq.rabbitmq.reply-to, confirmed
                 basic.return / nack   → sink.on_failure(PublishError)
                 reply                 → the sink of its correlation id: on_reply(delivery)
                 no sink               → dropped, counted late (forgotten, or the sink had
                                         its answer) or unmatched
                 connection lost       → every request sent: AskInterrupted, at once
```

A sink stays registered until `forget` (an ask by topic collects several replies). A reply
is only routed here, never decoded: the caller's `PendingAsk` checks it (size included).

A broker that cannot be reached fails a request fast, with `BrokerUnavailable` (nothing was
sent): once every node failed since the last connection (a cluster fails over first),
what waits is failed when the next attempt fails; while the broker is known to be down, a
request makes an attempt at once (at most once every `RECONNECT_NOW_EVERY_S`; within that,
the last attempt's failure is fresh and the request fails at once). A connection that goes
silent is not probed: the caller's deadline bounds the wait (`AskTimeout`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.frame
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.spec import Basic

from leveret.schemas.errors import (
    AskInterrupted,
    BrokerUnavailable,
    LeveretError,
    PublishError,
)
from leveret.services.asking import Asking, RecentlyForgotten, ReplySink
from leveret.services.middleware import MiddlewareChain
from leveret.services.observability.logs import get_logger
from leveret.services.rabbitmq import _properties as wire_properties
from leveret.services.rabbitmq._confirms import CHANNEL_GONE, Confirms
from leveret.services.rabbitmq._connection import DEFAULT_CONNECT_TIMEOUT_S, IOThread, describe
from leveret.services.rabbitmq._declare import declare_async
from leveret.services.rabbitmq._outage import RECONNECT_NOW_EVERY_S, Outage
from leveret.services.topology import declarations as topology
from leveret.services.topology.addresses import Addresses
from leveret.services.transport import OutgoingMessage

log = get_logger("leveret.asking")

REPLY_TO = "amq.rabbitmq.reply-to"
"""RabbitMQ's direct reply-to: consumed by the asking channel, the ``reply_to`` of each
request (the broker replaces it with the channel's own address)."""

REOPEN_CHANNEL_AFTER_S = 1.0
"""After the broker closed the asking channel (the connection still open): when to open
another."""

_live: weakref.WeakSet[RabbitAsking] = weakref.WeakSet()
_NO_MIDDLEWARE = MiddlewareChain()


def _no_middleware() -> MiddlewareChain:
    return _NO_MIDDLEWARE


@dataclass(eq=False, slots=True)
class _Request:
    item: OutgoingMessage
    sink: ReplySink
    written: bool = False  # on the current channel: its replies come there
    forgotten: bool = False  # the caller stopped waiting: not sent if not yet

    @property
    def message_id(self) -> str:
        return self.item.envelope.message_id

    @property
    def actor(self) -> str:
        return self.item.route.queue or self.item.route.topic


class RabbitAsking(IOThread, Asking):
    """Requests and their replies over one connection of their own (see the module).

    Args:
        url: AMQP URL (or several, commas between them: a cluster's nodes).
        namespace: The namespace requests are published in.
        connect_timeout_s: How long one connection attempt may take.
        chain: Gives the broker's middleware chain (the transport's `Transport.chain`, read
            at each reply dropped), whose ``reply_dropped`` sees each reply dropped.

    Attributes:
        late_replies: Replies dropped because their caller had stopped waiting.
        unmatched_replies: Replies dropped because no request of this process has their
            correlation id.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        chain: Callable[[], MiddlewareChain] | None = None,
    ) -> None:
        IOThread.__init__(self, url, role="asker", connect_timeout_s=connect_timeout_s)
        self.namespace = namespace
        self._chain = chain or _no_middleware
        self.late_replies = 0
        self.unmatched_replies = 0
        self._addresses = Addresses(namespace)
        self._steps = topology.namespace_steps(namespace)
        self._forgotten = RecentlyForgotten()
        self._reset_state()
        _live.add(self)

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        # Callers register and forget; the I/O thread looks up and fails: under the lock.
        self._lock = threading.Lock()
        self._requests: dict[str, _Request] = {}
        # Callers append on the right, the I/O thread takes from the left (atomic).
        self._inbox: deque[_Request] = deque()
        self._wake_pending = False
        self._channel: Channel | None = None
        self._ready = False  # consuming the replies, confirming: requests may go out
        self._confirms: Confirms[_Request] = Confirms()
        self._outage = Outage(self, deque(), {})

    def _forget_parent_after_fork(self) -> None:
        """In a forked child: drop the parent's connection, thread and requests (its
        callers are not in this process). Never touch the socket (a close frame would end
        the parent's connection); keep the objects alive so that nothing closes them."""
        self.drop_inherited()
        self._reset_state()

    # Asking, any thread -----------------------------------------------------------------

    def request(self, item: OutgoingMessage, sink: ReplySink) -> None:
        self._ensure_started()
        request = _Request(item, sink)
        with self._lock:  # before it can be sent, so before it can be answered
            self._requests[request.message_id] = request
        self._inbox.append(request)
        if not self._wake_pending:
            self._wake_pending = True
            self.call_soon(self._flush)

    def forget(self, message_id: str) -> None:
        with self._lock:
            request = self._requests.pop(message_id, None)
        if request is not None:
            request.forgotten = True
        self._forgotten.add(message_id)

    def close(self) -> None:
        if os.getpid() == self._pid:
            self.stop()

    def _ensure_started(self) -> None:
        if os.getpid() != self._pid:
            self._forget_parent_after_fork()
        if self.running:
            return
        with self._start_lock:
            if not self.running:
                self._wake_pending = False  # a wake-up the ended thread never ran
                self.start()

    # I/O thread: the channel ------------------------------------------------------------

    def on_connected(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        self._ready = False
        confirms: Confirms[_Request] = Confirms()
        self._confirms = confirms
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(functools.partial(self._on_return, confirms))

        def ready(_frame: Any = None) -> None:
            if channel is self._channel and channel.is_open:
                self._ready = True
                self._flush()

        def consume() -> None:
            # Direct reply-to: consumed before anything is published with it.
            channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True, callback=ready)

        # The namespace's exchanges first: a request by topic to an exchange that does not
        # exist would close the channel, and every ask in flight on it with it.
        channel.confirm_delivery(
            functools.partial(self._on_confirm, confirms),
            callback=lambda _frame: declare_async(channel, self._steps, consume),
        )

    def _reopen_channel(self, connection: SelectConnection) -> None:
        """A channel again on `connection`, the one whose channel the broker closed (a
        connection made since opened its own in `on_connected`: never a second one)."""
        if self._channel is None and connection is self.connection and connection.is_open:
            connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        was_ready = self._ready
        self._channel = None
        self._ready = False
        self._interrupt(describe(reason))
        connection = self.connection
        if self._stopping or connection is None or not connection.is_open:
            return  # the connection went too: `on_disconnected` follows
        log.warning("ask_channel_lost", error=describe(reason))
        if not was_ready:  # refused while it was set up: nothing can be sent on it
            self._fail_unsent(
                lambda request: PublishError(
                    f"the broker refused the asking channel ({describe(reason)}); nothing was sent",
                    message_id=request.message_id,
                )
            )
        self.call_later(REOPEN_CHANNEL_AFTER_S, functools.partial(self._reopen_channel, connection))

    def on_disconnected(self, reason: BaseException) -> None:
        self._channel = None
        self._ready = False
        self._interrupt(describe(reason))
        if self._outage.known_down():
            self._fail_unreachable()

    def on_connect_failed(self, error: BaseException) -> None:
        if self._outage.known_down():
            self._fail_unreachable()

    def on_stopping(self) -> None:
        self._interrupt("the asking connection was closed")
        self._fail_unsent(
            lambda request: AskInterrupted(
                "the asking connection was closed before request "
                f"{request.message_id} was sent; nothing was sent",
                actor=request.actor,
                message_id=request.message_id,
            )
        )

    def on_crashed(self, error: BaseException) -> None:
        # The next request starts a new I/O thread and connection; nobody waits in vain.
        why = f"the asking I/O thread failed: {type(error).__name__}: {error}"
        self._channel = None
        self._ready = False
        self._interrupt(why)
        self._fail_unsent(
            lambda request: PublishError(f"{why}; nothing was sent", message_id=request.message_id)
        )

    # I/O thread: requests ---------------------------------------------------------------

    def _flush(self) -> None:
        """Publish every request waiting, or see about a connection."""
        self._wake_pending = False
        channel = self._channel
        if channel is None or not self._ready or not channel.is_open:
            self._no_channel()
            return
        inbox = self._inbox
        while inbox:
            request = inbox.popleft()
            if request.forgotten:
                continue  # its caller stopped waiting before it was sent
            try:
                self._write(channel, request)
            except CHANNEL_GONE:
                inbox.appendleft(request)  # nothing written: on the next channel
                return
            except Exception as exc:  # noqa: BLE001  # pika cannot encode it: its own failure
                self._fail(
                    request,
                    PublishError(
                        f"request {request.message_id} cannot be sent: {type(exc).__name__}: {exc}",
                        message_id=request.message_id,
                    ),
                )

    def _write(self, channel: Channel, request: _Request) -> None:
        item = request.item
        address = self._addresses.publish(queue=item.route.queue, topic=item.envelope.topic)
        props = wire_properties.properties(item.envelope)
        props.reply_to = REPLY_TO
        channel.basic_publish(
            address.exchange, address.routing_key, item.body, props, mandatory=True
        )
        request.written = True
        self._confirms.sent(request)

    def _no_channel(self) -> None:
        """Requests wait and no channel is ready: fail them fast if the broker is known to
        be down, after an attempt made now (or one just made)."""
        if self.connection is not None or self.attempting or not self._outage.known_down():
            return  # the channel opens, or a connection attempt (or failover) is under way
        if time.monotonic() - self.attempt_started_at < RECONNECT_NOW_EVERY_S:
            self._fail_unreachable()  # an attempt just failed: its answer is fresh
        else:
            self.reconnect_now()  # `on_connect_failed` fails them if it fails too

    def _on_return(
        self,
        confirms: Confirms[_Request],
        _channel: Channel,
        method: Basic.Return,
        props: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        confirms.returned(props.message_id or "", f"{method.reply_code} {method.reply_text}")

    def _on_confirm(
        self, confirms: Confirms[_Request], frame: pika.frame.Method[Basic.Ack | Basic.Nack]
    ) -> None:
        def settle(request: _Request, acked: bool, returned: str | None) -> None:
            if returned is not None:
                self._fail(request, self._unroutable(request, returned))
            elif not acked:
                self._fail(
                    request,
                    PublishError(
                        f"the broker refused request {request.message_id} to "
                        f"{request.actor!r} (nack): nothing will answer it",
                        message_id=request.message_id,
                    ),
                )

        confirms.confirmed(frame.method, settle)

    def _unroutable(self, request: _Request, returned: str) -> PublishError:
        queue = request.item.route.queue
        if queue is not None:
            what = (
                f"no queue took request {request.message_id} ({returned}): the queue of "
                f"actor {queue!r} does not exist (declare the actor; is a worker running it?)"
            )
        else:
            what = (
                f"no queue took request {request.message_id} ({returned}): no actor's queue "
                f"is bound to topic {request.actor!r} (declare the actors; are workers "
                "running them?)"
            )
        return PublishError(what, message_id=request.message_id)

    # I/O thread: replies ----------------------------------------------------------------

    def _on_reply(
        self,
        _channel: Channel,
        method: Basic.Deliver,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        try:
            delivery = wire_properties.delivery(method, props, body)
        except Exception:  # unreadable: nobody's reply (never a warning each)
            log.debug("reply_unreadable", exc_info=True)
            self._dropped("unmatched", None)
            return
        correlation_id = delivery.correlation_id
        with self._lock:
            request = self._requests.get(correlation_id) if correlation_id else None
        if request is None:
            late = correlation_id is not None and correlation_id in self._forgotten
            self._dropped("late" if late else "unmatched", correlation_id)
        elif _tell(request.sink.on_reply, delivery) is False:
            self._dropped("late", correlation_id)  # its sink has what it waited for

    def _dropped(self, reason: str, correlation_id: str | None) -> None:
        """A reply nobody waits for: counted, a debug line (a hostile client could send
        many), and the middleware told."""
        if reason == "late":
            self.late_replies += 1
        else:
            self.unmatched_replies += 1
        log.debug("reply_dropped", reason=reason, correlation_id=(correlation_id or "")[:64])
        self._chain().reply_dropped(reason)

    # I/O thread: failing requests -------------------------------------------------------

    def _fail(self, request: _Request, error: LeveretError) -> None:
        """`request` gets no answer: unregistered (no reply can come), its sink told."""
        with self._lock:
            if self._requests.get(request.message_id) is request:
                del self._requests[request.message_id]
        _tell(request.sink.on_failure, error)

    def _interrupt(self, why: str) -> None:
        """The channel replies come on is gone: every request sent on it fails at once."""
        self._confirms = Confirms()
        with self._lock:
            sent = [request for request in self._requests.values() if request.written]
            for request in sent:
                del self._requests[request.message_id]
        for request in sent:
            _tell(
                request.sink.on_failure,
                AskInterrupted(
                    f"the connection replies come on was lost ({why}) while request "
                    f"{request.message_id} to {request.actor!r} waited for its answer: it "
                    "may or may not be handled",
                    actor=request.actor,
                    message_id=request.message_id,
                ),
            )

    def _fail_unreachable(self) -> None:
        reason = self._outage.reason(time.monotonic())
        self._fail_unsent(
            lambda request: BrokerUnavailable(
                f"{reason}; nothing was sent", message_id=request.message_id
            )
        )

    def _fail_unsent(self, error: Callable[[_Request], LeveretError]) -> None:
        """Fail every request waiting to be sent."""
        inbox = self._inbox
        while inbox:
            request = inbox.popleft()
            if not request.forgotten:
                self._fail(request, error(request))


def _tell(callback: Callable[[Any], object], argument: Any) -> object:
    """Call a sink, and return what it returns (None if it raised): one that raises must
    not end the I/O thread every ask relies on."""
    try:
        return callback(argument)
    except Exception:  # logged; the others go on
        with contextlib.suppress(Exception):
            owner = getattr(callback, "__self__", None)
            log.exception("reply_sink_failed", sink=type(owner).__qualname__)
        return None


def _reset_all_after_fork() -> None:
    for asking in list(_live):
        asking._forget_parent_after_fork()


os.register_at_fork(after_in_child=_reset_all_after_fork)
