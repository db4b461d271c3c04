"""Internal: asks on the in-memory broker, answered by its workers or `MemoryBroker.join`.

The same request and the same answer as on RabbitMQ: the request carries a reply address
of `wire.REPLY_TO_PREFIX` and its deadline; the worker's outcome carries the `Reply`, which
the transport hands to the waiting caller's sink as it settles the request. Deadlines are
read on the transport's virtual clock: advancing it past an ask's deadline fails that ask
with `AskTimeout` at once (the caller's own wait is bounded in real time too).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from leveret.schemas import wire
from leveret.schemas.envelope import deadline_of, seconds_since_epoch
from leveret.schemas.errors import AskInterrupted, AskTimeout, PublishError
from leveret.services.asking import Asking, RecentlyForgotten, ReplySink
from leveret.services.delivery import Delivery, Reply

if TYPE_CHECKING:
    from leveret.services.memory.transport import MemoryTransport
    from leveret.services.transport import OutgoingMessage

REPLY_TO = f"{wire.REPLY_TO_PREFIX}.memory"
"""The reply address of every ask in memory: answers are matched by correlation id."""


class MemoryAsking(Asking):
    """The asking role of a `MemoryTransport`.

    Args:
        transport: The transport whose queues the requests go to.
    """

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self._sinks: dict[str, tuple[ReplySink, float | None]] = {}
        self._forgotten = RecentlyForgotten()
        self._answered = RecentlyForgotten(1000)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.transport.clock.now()

    def request(self, item: OutgoingMessage, sink: ReplySink) -> None:
        message_id = item.envelope.message_id
        deadline_s = deadline_of(item.envelope.headers.get(wire.DEADLINE))
        with self._lock:
            self._sinks[message_id] = (sink, deadline_s)
        try:
            result = self.transport.publish_request(item, REPLY_TO)
            answer_here = self.transport.answer_in_thread
            if answer_here is not None:
                answer_here()
        except PublishError as exc:
            sink.on_failure(exc)
            return
        except Exception:
            # Eager mode re-raises a handler's error in the publishing thread; the caller of
            # an ask hears of it as on RabbitMQ, from the answer (a `RemoteError`).
            if message_id in self._answered:
                return
            self.forget(message_id)
            raise
        if result.unroutable:  # a fan-out (ask_all) no queue took, as RabbitMQ returns it
            sink.on_failure(
                PublishError(
                    f"no queue took request {message_id}: no actor's queue is bound to topic "
                    f"{item.envelope.topic!r} (declare the actors)",
                    message_id=message_id,
                )
            )

    def forget(self, message_id: str) -> None:
        with self._lock:
            if self._sinks.pop(message_id, None) is not None:
                self._forgotten.add(message_id)

    def deliver(self, reply: Reply) -> None:
        """Hand `reply` to the caller waiting for it (the transport, settling a request)."""
        if reply.to != REPLY_TO:
            return  # an address of no caller of this process
        with self._lock:
            found = self._sinks.get(reply.correlation_id)
        self._answered.add(reply.correlation_id)
        if found is None:
            late = reply.correlation_id in self._forgotten
            self.transport.chain.reply_dropped("late" if late else "unmatched")
            return
        taken = found[0].on_reply(
            Delivery(
                body=reply.body,
                topic=reply.topic or None,
                message_id=reply.message_id,
                correlation_id=reply.correlation_id,
                timestamp=seconds_since_epoch(int(self.now())),
                headers=reply.wire_headers(),
            )
        )
        if not taken:
            self.transport.chain.reply_dropped("late")

    def expire(self, now_s: float) -> None:
        """Fail the asks whose deadline `now_s` (the virtual clock) has passed."""
        with self._lock:
            due = [
                (message_id, sink)
                for message_id, (sink, deadline_s) in self._sinks.items()
                if deadline_s is not None and deadline_s <= now_s
            ]
        for message_id, sink in due:
            sink.on_failure(
                AskTimeout(
                    f"no answer to request {message_id} by its deadline (the virtual clock "
                    "passed it)",
                    message_id=message_id,
                )
            )

    def close(self) -> None:
        with self._lock:
            sinks = [sink for sink, _deadline in self._sinks.values()]
        for sink in sinks:
            sink.on_failure(AskInterrupted("the in-memory broker was closed"))
