"""Internal: failing what waits for a connection while the broker cannot be reached.

Once no connection has been open for `connect_timeout_s` and every node failed since the
last one (a cluster fails over first), the broker is known to be unreachable. What waits for
a connection then fails at its deadline: a message with `BrokerUnavailable` when it was never
written (nothing was sent), or `PublishTimeout` when it was written on a connection since
lost (it may be stored); a declaration with `BrokerConnectionError`. While callers wait, a
connection attempt is made at once rather than after the backoff's wait.

`Outage` only decides and settles; the publisher (`_publisher`) says when to look again.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future

from leveret.schemas.errors import BrokerConnectionError
from leveret.services.rabbitmq._connection import IOThread, describe
from leveret.services.rabbitmq._outgoing import Outgoing, abandoned

WAIT_WHILE_DOWN_S = 1.0
"""How long a publish (or declaration) waits for a connection while the broker is known to
be unreachable: no connection for `connect_timeout_s`, every node failed since the last one.
A connection attempt is made at once meanwhile (`RECONNECT_NOW_EVERY_S`)."""
RECONNECT_NOW_EVERY_S = 1.0
"""A publish while the broker is known to be unreachable makes a connection attempt at once,
instead of waiting for the backoff: at most once in this many seconds."""


class Outage:
    """What waits for a connection, and its deadline while the broker cannot be reached.

    I/O thread only, but for `known_down`.

    Args:
        io: The publisher's I/O thread, whose connection state tells an outage.
        inbox: The messages waiting to be sent (the publisher's, shared).
        declaring_since: Declarations asked for and not done, with when (monotonic).
    """

    def __init__(
        self,
        io: IOThread,
        inbox: deque[Outgoing],
        declaring_since: dict[Future[None], float],
    ) -> None:
        self._io = io
        self._inbox = inbox
        self._declaring_since = declaring_since

    def known_down(self) -> bool:
        """Whether no connection is open and every node failed since one last was."""
        io = self._io
        return io.outage_since is not None and len(io.failed_nodes) >= io.nodes

    def deadline(self, since: float) -> float | None:
        """When a caller that began waiting at `since` gives up waiting for a connection;
        None while no outage is known to be under way (connected, or a node not yet tried
        since the connection was lost: a cluster fails over first)."""
        io = self._io
        outage = io.outage_since
        if outage is None or io.connection is not None or not self.known_down():
            return None
        return max(since + WAIT_WHILE_DOWN_S, outage + io.connect_timeout_s)

    def expire(self) -> float | None:
        """Fail what waits for a connection past its deadline (`deadline`), and make a
        connection attempt now when the broker is known to be unreachable and callers wait
        (`reconnect_if_down`). No connection is open.

        Returns:
            In how many seconds to look again (the next deadline or attempt); None when
            nothing waits on one.
        """
        now = time.monotonic()
        upcoming: list[float] = []
        inbox = self._inbox
        reason: str | None = None
        if inbox or self._declaring_since:
            # Callers wait: an attempt at least every RECONNECT_NOW_EVERY_S, not after the
            # backoff's growing wait, so that a broker back before their deadline is used.
            self.reconnect_if_down()
            if self.known_down() and not self._io.attempting:
                upcoming.append(self._io.attempt_started_at + RECONNECT_NOW_EVERY_S)
        for _ in range(len(inbox)):  # one turn: what callers append meanwhile keeps its order
            item = inbox.popleft()
            assert item.batch is not None
            deadline = self.deadline(item.batch.submitted_at)
            if deadline is None or now < deadline:
                inbox.append(item)
                if deadline is not None:
                    upcoming.append(deadline)
                continue
            if abandoned(item):
                continue  # its caller already gave up
            reason = reason or self.reason(now)
            _settle_unreachable(item, reason)
        for future, since in list(self._declaring_since.items()):
            deadline = self.deadline(since)
            if deadline is not None and now >= deadline:
                if not future.done():
                    future.set_exception(BrokerConnectionError(self.reason(now)))
            elif deadline is not None:
                upcoming.append(deadline)
        if upcoming:
            return max(0.0, min(upcoming) - now)
        return None

    def reason(self, now: float) -> str:
        """Why what waits fails: the broker, unreachable since when, and the last error."""
        io = self._io
        outage = io.outage_since if io.outage_since is not None else now
        cause = describe(io.last_error) if io.last_error else "no connection"
        nodes = f" (all {io.nodes} nodes)" if io.nodes > 1 else ""
        return f"broker at {io.safe_url}{nodes} unreachable for {now - outage:.1f}s ({cause})"

    def reconnect_if_down(self) -> None:
        """A connection attempt now, if the broker is known to be unreachable and none was
        made within `RECONNECT_NOW_EVERY_S` (so that a broker that is back is seen at once,
        not after the backoff's wait, up to 30 s)."""
        io = self._io
        if (
            self.known_down()
            and not io.attempting
            and time.monotonic() - io.attempt_started_at >= RECONNECT_NOW_EVERY_S
        ):
            io.reconnect_now()


def _settle_unreachable(item: Outgoing, reason: str) -> None:
    """Fail `item` for want of a connection: never written, nothing was sent
    (`BrokerUnavailable`); written on a connection since lost, it may be stored
    (`PublishTimeout`)."""
    batch = item.batch
    assert batch is not None
    if item.written:
        batch.timed_out.append(item.index)
        reason = f"no confirm: the connection was lost and the {reason}; it may be stored"
    else:
        batch.unavailable.append(item.index)
        reason = f"{reason}; nothing was sent"
    batch.settle(item.index, reason, unroutable=False)
