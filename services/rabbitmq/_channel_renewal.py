"""Internal: replacing a publishing channel after the broker refused (nacked) a message.

RabbitMQ (seen on 3.10) keeps nacking, on one channel, every publish to a quorum queue with
``reject-publish`` overflow (the quorum delay levels) when that channel first published to
it while the queue's leader was dead, even after a new leader is elected; a new channel is
not affected. So a nack replaces the channel that got it, for the publisher (`_publisher`)
and the worker's republisher (`_republish`) alike.

The channel is not closed at once: messages it sent that the broker may have stored would
then be sent again on the new channel, stored twice. Nothing more is published on it, and
it closes when every message it sent is confirmed or nacked, or after `RENEW_DRAIN_MAX_S`
(what it still had in flight is then treated as after a lost channel).

The timings of reopening a channel are here too, one set for both.
"""

from __future__ import annotations

import time
from typing import Any

from pika.channel import Channel

from leveret.services.observability.logs import get_logger
from leveret.services.rabbitmq._confirms import Confirms
from leveret.services.rabbitmq._connection import IO, ReconnectBackoff

RENEW_AFTER_NACK_S = 1.0
"""A nack replaces the channel at most once in this many seconds: a nack seldom comes alone
(every message in flight to the queue meets the same refusal), and one renewal covers them
all; a second within the second would drain a channel that never published to the queue.
It is short because renewing costs one channel, nothing delivered: 5 s was the worker's when
a renewal closed its consuming channel and every delivery it held went back to its queue."""

RENEW_DRAIN_MAX_S = 5.0
"""How long a channel being replaced waits for the confirms of what it sent before it
closes anyway: a broker that answers confirms at all does within a second or two; longer
would hold the messages waiting for the next channel past a caller's patience."""

REOPEN_AFTER_RENEWAL_S = 0.05
"""After a renewed channel closed, how long until the next opens: at once, but from a
timer, so that pika has finished with the old one first."""

REOPEN_FIRST_S = 0.5
REOPEN_MAX_S = 30.0
"""After the broker closed a channel (it refused what was done on it), the next opens after
`REOPEN_FIRST_S`, doubling up to `REOPEN_MAX_S` while each new one is refused too: doing the
same at once again would loop as fast as the broker can refuse."""


def reopen_backoff() -> ReconnectBackoff:
    """The wait before reopening a channel the broker closed (reset once one is ready)."""
    return ReconnectBackoff(first_s=REOPEN_FIRST_S, max_s=REOPEN_MAX_S)


class ChannelRenewal:
    """When and how a channel that got a nack is replaced (I/O thread only).

    Args:
        io: The I/O thread (its timers).
        role: ``publisher`` or ``worker``: names the log events
            (``<role>_channel_renewing``, ``<role>_channel_renewed``).
        reason: Why, for the log (what was nacked).
    """

    def __init__(self, io: IO, *, role: str, reason: str) -> None:
        self._io = io
        self._log = get_logger(f"leveret.{role}")
        self._renewing = f"{role}_channel_renewing"
        self._renewed = f"{role}_channel_renewed"
        self._reason = reason
        self._renewed_at = -RENEW_AFTER_NACK_S

    def due(self) -> bool:
        """Whether a nack now replaces the channel (none did within `RENEW_AFTER_NACK_S`);
        if so, the caller must `drain` it."""
        now = time.monotonic()
        if now - self._renewed_at < RENEW_AFTER_NACK_S:
            return False
        self._renewed_at = now
        return True

    def drain(self, channel: Channel, confirms: Confirms[Any]) -> None:
        """`channel` publishes nothing more (the caller's part): close it once `confirms`
        has nothing outstanding (`close_if_drained`, from each confirm), or after
        `RENEW_DRAIN_MAX_S`."""
        self._log.warning(self._renewing, reason=self._reason, outstanding=len(confirms))

        def give_up_waiting() -> None:
            if channel.is_open:
                self._log.warning(
                    self._renewed,
                    outstanding=len(confirms),
                    reason=f"confirms still outstanding after {RENEW_DRAIN_MAX_S} s",
                )
                channel.close()

        self._io.call_later(RENEW_DRAIN_MAX_S, give_up_waiting)
        self.close_if_drained(channel, confirms)

    def close_if_drained(self, channel: Channel, confirms: Confirms[Any]) -> None:
        """Close `channel`, being replaced, if nothing it sent awaits a confirm."""
        if not confirms and channel.is_open:
            self._log.warning(self._renewed, reason=self._reason)
            channel.close()
