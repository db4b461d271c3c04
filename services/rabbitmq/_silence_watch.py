"""Internal: ending a connection that went silent while confirms are outstanding.

A network that drops packets leaves a connection open until two heartbeats, a minute, have
been missed, and the publisher's callers would wait that long for their confirms. So while
confirms are outstanding the publisher watches what the broker sends: nothing received for
`PROBE_AFTER_S`, a channel is opened, which a broker that is there answers at once; with
still nothing received for `connect_timeout_s` more, the connection is ended as lost, since
it went silent (what it had unconfirmed is then sent again on the next one).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pika.channel import Channel

from leveret.services.observability.logs import get_logger
from leveret.services.rabbitmq._connection import IOThread

log = get_logger("leveret.publisher")

PROBE_AFTER_S = 1.0
"""Confirms outstanding and nothing received for this long: a channel is opened, which a
broker that is there answers at once; with nothing received for `connect_timeout_s` more,
the connection is ended as lost (a network that drops packets would leave it open until
two heartbeats, a minute, had been missed)."""
_WATCH_EVERY_S = 0.25


class SilenceWatch:
    """Watches the publisher's connection while confirms are outstanding (I/O thread only).

    Args:
        io: The publisher's I/O thread: its connection, timers and `connect_timeout_s`.
        outstanding: How many confirms are outstanding; the watch stops at none.
        blocked: Whether the broker blocks publishing (an alarm): silence on purpose.
    """

    def __init__(
        self, io: IOThread, outstanding: Callable[[], int], blocked: Callable[[], bool]
    ) -> None:
        self._io = io
        self._outstanding = outstanding
        self._blocked = blocked
        self.watching = False
        """Whether a watch is under way (`start` it when confirms become outstanding)."""
        self._round = 0  # a timer of an earlier connection's watch stops at once
        # Bytes received when last looked, since when nothing came, and when a probe was
        # sent (None: none in flight).
        self._seen_bytes = 0
        self._silent_since = 0.0
        self._probe_sent_at: float | None = None

    def start(self) -> None:
        """Watch the open connection from now, until no confirm is outstanding."""
        connection = self._io.connection
        if connection is None:
            return
        self.watching = True
        self._round += 1
        self._seen_bytes = connection.bytes_received  # type: ignore[attr-defined]
        self._silent_since = time.monotonic()
        self._probe_sent_at = None
        round_ = self._round
        self._io.call_later(PROBE_AFTER_S, lambda: self._watch(round_))

    def stop(self) -> None:
        """The connection is gone (or the loop whose timers watched it): stop watching."""
        self.watching = False

    def _watch(self, round_: int) -> None:
        """While confirms are outstanding: has the broker sent anything lately? If not for
        `PROBE_AFTER_S`, open a channel (a broker that is there answers at once); no answer
        for `connect_timeout_s` more ends the connection as lost (see the module)."""
        if round_ != self._round or not self.watching:
            return  # a watch of an earlier connection
        io = self._io
        connection = io.connection
        if connection is None or not connection.is_open or not self._outstanding():
            self.watching = False
            return
        now = time.monotonic()
        received: int = connection.bytes_received  # type: ignore[attr-defined]
        if received != self._seen_bytes or self._blocked():
            # Something came (or the broker blocks us on purpose: an alarm, not silence).
            self._seen_bytes = received
            self._silent_since = now
            self._probe_sent_at = None
        elif self._probe_sent_at is None:
            if now - self._silent_since >= PROBE_AFTER_S:
                self._probe_sent_at = now
                connection.channel(on_open_callback=_close_probe)
        elif now - self._probe_sent_at >= io.connect_timeout_s:
            silent_s = round(now - self._silent_since, 1)
            log.warning(
                "broker_not_answering",
                url=io.safe_url,
                silent_s=silent_s,
                unconfirmed=self._outstanding(),
                hint="the connection is ended as lost; what it had unconfirmed is sent again",
            )
            self.watching = False
            io.end_silent_connection(
                self._silent_since,
                f"no answer from {io.safe_url} for {silent_s}s, not even to opening a channel",
            )
            return
        io.call_later(_WATCH_EVERY_S, lambda: self._watch(round_))


def _close_probe(channel: Channel) -> None:
    """A probe channel was opened: the broker answers; close it again."""
    channel.close()
