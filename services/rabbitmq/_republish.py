"""Internal: a worker's retries and dead letters, published on a confirm channel of their own.

A worker settles a delivery that fails by publishing its retry (or dead letter) and acking
the original once the broker confirmed the copy. The copies go out on a channel apart from
the one that consumes, so that whatever befalls publishing leaves the deliveries in flight
alone: when the broker refuses a copy (a nack) the channel is replaced, as RabbitMQ (seen on
3.10) may keep refusing, on one channel, every publish to a quorum queue with
``reject-publish`` overflow once that channel met the queue without a leader. Closing the
consuming channel instead would give every delivery it holds back to its queue while other
handlers still run them: each would be handled twice.

The replaced channel publishes nothing more; it closes once every copy it sent is confirmed
or refused, or after `RENEW_DRAIN_MAX_S` (a copy still unconfirmed then may be stored: its original
goes back to its queue all the same, and may be handled again). Copies wait meanwhile for
the next channel, which opens at once.

Every copy's fate goes back to the consumer through its callbacks, on the I/O thread:
`stored` (ack the original), `refused` (not stored, or not known to be: keep the original),
`unencodable` (no copy can be written: let the broker dead-letter the original).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import pika.frame
from pika.channel import Channel
from pika.spec import Basic

from leveret.services.observability.logs import get_logger
from leveret.services.rabbitmq import _properties as wire_properties
from leveret.services.rabbitmq._channel_renewal import ChannelRenewal, reopen_backoff
from leveret.services.rabbitmq._confirms import CHANNEL_GONE, Confirms
from leveret.services.rabbitmq._connection import IO, describe
from leveret.services.rabbitmq._declare import declare_async
from leveret.services.runtime.consumer import Job
from leveret.services.topology.declarations import Step

log = get_logger("leveret.worker")


@dataclass(frozen=True, slots=True)
class Copy:
    """A retry or dead letter of `job`, to publish to `exchange` with `routing_key`;
    `reply_to` is the request's for a retry of an ask (None for a dead letter)."""

    job: Job
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    reply_to: str | None = None

    @property
    def message_id(self) -> str:
        """The id of the message copied (a copy keeps it)."""
        return self.job.delivery.message_id


@dataclass(eq=False, slots=True)
class _Channel:
    channel: Channel
    confirms: Confirms[Copy] = field(default_factory=Confirms)
    ready: bool = False  # publishing (it was opening before)
    draining: bool = False


class Republisher:
    """Publishes copies with confirms on a channel of the worker's connection (I/O thread).

    Args:
        io: The consumer's I/O thread (its connection and timers).
        stored: Called with a job once its copy is confirmed.
        refused: Called with a job and why, when its copy was not stored or may not be (a
            nack, no queue took it, the channel closed before the confirm).
        unencodable: Called with a job whose copy cannot be written at all.
        steps: The topology to declare again before publishing on a new channel, after the
            broker closed the previous one (a target exchange was missing).
        current: Whether a job's delivery is still the consumer's (its channel lives): a
            copy of one that is not is never published (the broker redelivers it).
    """

    def __init__(
        self,
        io: IO,
        *,
        stored: Callable[[Job], None],
        refused: Callable[[Job, str], None],
        unencodable: Callable[[Job], None],
        steps: Callable[[], list[Step]],
        current: Callable[[Job], bool],
    ) -> None:
        self._io = io
        self._is_current = current
        self._stored = stored
        self._refused = refused
        self._unencodable = unencodable
        self._steps = steps
        self._current: _Channel | None = None
        self._opening = False
        self._queued: deque[Copy] = deque()  # waiting for a channel
        self._redeclare = False
        self._renewal = ChannelRenewal(
            io, role="worker", reason="the broker nacked a retry or dead letter"
        )
        self._reopen_backoff = reopen_backoff()

    def publish(self, copy: Copy) -> None:
        """Publish `copy` now, or as soon as a channel is open."""
        if not self._is_current(copy.job):
            # Its delivery's channel is gone (the copy waited for a channel meanwhile): the
            # broker redelivers the original, so this copy would be a second one.
            log.info(
                "republish_dropped",
                message_id=copy.job.delivery.message_id,
                reason="its delivery's channel closed meanwhile; the broker redelivers it",
            )
            return
        current = self._current
        if current is None or not current.channel.is_open:
            self._queued.append(copy)
            self._open()
            return
        props = wire_properties.republish_properties(
            copy.job.delivery, copy.headers, reply_to=copy.reply_to
        )
        try:
            self._write(current, copy, props)
            return
        except CHANNEL_GONE:
            self._queued.append(copy)  # nothing written: on the next channel
            self._current = None
            self._open()
            return
        except Exception as exc:  # noqa: BLE001  # a copied header pika cannot encode
            log.warning(
                "republish_headers_replaced",
                message_id=copy.job.delivery.message_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        try:
            headers = wire_properties.encodable_headers(copy.headers)
            props = wire_properties.republish_properties(
                copy.job.delivery, headers, reply_to=copy.reply_to
            )
            self._write(current, copy, props)
        except Exception:  # still not publishable: let the broker dead-letter the original
            log.exception("republish_failed", message_id=copy.job.delivery.message_id)
            self._unencodable(copy.job)

    def reset(self) -> None:
        """The connection is gone, and every channel with it: forget everything (what was
        delivered on it is the broker's again)."""
        self._current = None
        self._opening = False
        self._queued.clear()

    def _write(self, target: _Channel, copy: Copy, props: pika.BasicProperties) -> None:
        target.channel.basic_publish(
            copy.exchange, copy.routing_key, copy.job.delivery.body, props, mandatory=True
        )
        target.confirms.sent(copy)

    # Channels ---------------------------------------------------------------------------

    def _open(self) -> None:
        connection = self._io.connection
        if self._opening or connection is None or not connection.is_open:
            return  # a new connection opens a new channel when the next copy comes
        self._opening = True
        connection.channel(on_open_callback=self._on_open)

    def _on_open(self, channel: Channel) -> None:
        target = _Channel(channel)
        channel.add_on_close_callback(functools.partial(self._on_closed, target))
        channel.add_on_return_callback(functools.partial(self._on_return, target))

        def ready() -> None:
            if not channel.is_open:
                return  # refused while declaring: its close callback has the reason
            self._opening = False
            self._reopen_backoff.reset()
            target.ready = True
            self._current = target
            queued, self._queued = self._queued, deque()
            for copy in queued:
                self.publish(copy)

        def confirming(_frame: pika.frame.Method[Any]) -> None:
            if self._redeclare:
                self._redeclare = False
                declare_async(channel, self._steps(), ready)
            else:
                ready()

        channel.confirm_delivery(functools.partial(self._on_confirm, target), callback=confirming)

    def _on_closed(self, target: _Channel, _channel: Channel, reason: BaseException) -> None:
        if self._current is target:
            self._current = None
        if not target.ready:
            self._opening = False  # closed while it was opening
        waiting = [copy.job for copy in target.confirms.in_flight()]
        target.confirms = Confirms()
        connection = self._io.connection
        if connection is None or not connection.is_open:
            return  # the connection went: its deliveries are the broker's again
        refused = isinstance(reason, pika.exceptions.ChannelClosedByBroker)
        if refused:
            # A target that does not exist (an exchange deleted): declare it all again.
            self._redeclare = True
            log.warning("republish_channel_closed", error=describe(reason))
        for job in waiting:
            self._refused(job, f"its channel closed before the confirm ({describe(reason)})")
        if refused and not target.ready:
            # Refused while it opened (declaring the topology again): the copies waiting
            # for it are refused too rather than held, so their originals go back to their
            # queues (and each new copy tries a new channel).
            queued, self._queued = self._queued, deque()
            for copy in queued:
                self._refused(copy.job, f"no channel could be opened ({describe(reason)})")
        if self._queued:
            self._io.call_later(self._reopen_backoff.next_delay_s(), self._open)

    def _on_return(
        self,
        target: _Channel,
        _channel: Channel,
        method: Basic.Return,
        props: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        target.confirms.returned(props.message_id or "", f"{method.reply_code} {method.reply_text}")

    def _on_confirm(
        self, target: _Channel, frame: pika.frame.Method[Basic.Ack | Basic.Nack]
    ) -> None:
        def settle(copy: Copy, acked: bool, returned: str | None) -> None:
            if acked and returned is None:
                self._stored(copy.job)
                return
            if not acked:
                self._renew(target)
            self._refused(copy.job, "broker nacked" if returned is None else "no queue took it")

        target.confirms.confirmed(frame.method, settle)
        if target.draining:
            self._renewal.close_if_drained(target.channel, target.confirms)

    def _renew(self, target: _Channel) -> None:
        """Replace `target` after a nack (see `_channel_renewal`): nothing more is published
        on it, and the next copy opens a new channel at once."""
        if target is not self._current or not self._renewal.due():
            return
        self._current = None
        target.draining = True
        self._renewal.drain(target.channel, target.confirms)
