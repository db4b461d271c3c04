"""Request/reply: what a transport does for an ask, and how a caller waits for the answer.

```text
Pricing.ask(QuoteAsked(...), timeout=2)
  └─ Broker.ask ─ Outbound.ask: built between the publish hooks (operation "ask"), with
       │          the deadline in ``x-leveret-deadline``
       └─ Transport.asking.request(item, PendingAsk)   the transport sets ``reply_to``
            RabbitMQ: one connection per process, consuming direct reply-to
            (``amq.rabbitmq.reply-to``, no queue declared); replies matched by their
            correlation id, which is the request's message id
  worker: the handler's answer (its return value, or ctx.reply) → Outcome.reply → the
          consumer publishes it to ``reply_to`` when it settles the request
  └─ PendingAsk.wait: the answer decoded as the handler's reply type, or an error
```

The transport's side (`Asking`) only routes raw replies by correlation id to the
`ReplySink` registered for them; decoding, validation and errors happen in the caller's
thread (`PendingAsk`), so a hostile or huge reply costs its own caller only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from leveret.schemas import wire
from leveret.schemas.codec import decode
from leveret.schemas.errors import (
    AskError,
    AskTimeout,
    DecodeError,
    InvalidReply,
    LeveretError,
    RemoteError,
)
from leveret.schemas.message import Message, message_class
from leveret.services.delivery import Delivery

if TYPE_CHECKING:
    from leveret.services.transport import OutgoingMessage

MAX_REPLY_BYTES = 16 * 1024 * 1024
"""A reply larger than this fails its ask with `InvalidReply`, unread (as a worker's
largest body)."""


class ReplySink(Protocol):
    """Where a transport hands what concerns one request; called on the transport's own
    thread: neither may block."""

    def on_reply(self, delivery: Delivery) -> bool:
        """A reply whose correlation id is the request's message id arrived (untrusted).

        Returns:
            False when the sink has what it waits for already (an answer came, or the
            ask failed): the transport counts the reply as late (``reply_dropped``).
        """

    def on_failure(self, error: LeveretError) -> None:
        """The request cannot be answered: not sent (`BrokerUnavailable`, a `PublishError`:
        no queue, refused), or the connection replies come on was lost (`AskInterrupted`)."""


class Asking(ABC):
    """A transport's request/reply role: publishes requests whose answers come back to
    this process, and routes each answer to the sink of its request.

    Every method may be called from any thread; none blocks for the broker.
    """

    def now(self) -> float:
        """Seconds since the epoch on the clock deadlines are read against (the workers'
        clock: real time, but the in-memory broker's virtual clock there)."""
        return time.time()

    @abstractmethod
    def request(self, item: OutgoingMessage, sink: ReplySink) -> None:
        """Publish `item` as a request: with this process's reply address as ``reply_to``,
        mandatory (a send whose queue does not exist fails its sink at once). Replies whose
        correlation id is the item's message id go to `sink` until `forget`.

        Never blocks: a broker that cannot be reached fails the sink (`BrokerUnavailable`)
        once a connection attempt failed; the caller's deadline bounds the rest.
        """

    @abstractmethod
    def forget(self, message_id: str) -> None:
        """The caller stopped waiting: later replies to `message_id` are dropped (counted
        as late)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; every request still waiting fails (`AskInterrupted`)."""


class RecentlyForgotten:
    """The ids of the last requests whose callers stopped waiting, to tell a late reply
    (counted ``late``) from one nobody asked for (``unmatched``); bounded."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def add(self, message_id: str) -> None:
        with self._lock:
            self._ids[message_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)

    def __contains__(self, message_id: object) -> bool:
        with self._lock:
            return message_id in self._ids


class PendingAsk:
    """One ask waiting for its answer: the `ReplySink` its transport calls, and the
    caller's wait (blocking, or awaited without a thread).

    The first reply or failure decides; anything after it is counted by the transport as
    late. Decoding happens in the caller's thread, in `wait`/`wait_async`.

    Args:
        actor: The actor asked (queue name): errors name it.
        message_id: The request's id.
        reply_type: The `Message` class the handler declares as its answer.
        timeout_s: How long the caller waits from now (its deadline travels with the
            request, on the transport's clock).
        max_reply_bytes: Larger replies fail the ask unread.
    """

    def __init__(
        self,
        actor: str,
        message_id: str,
        reply_type: type[Message],
        timeout_s: float,
        *,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.actor = actor
        self.message_id = message_id
        self.reply_type = reply_type
        self.ends = time.monotonic() + timeout_s
        self.max_reply_bytes = max_reply_bytes
        self.future: concurrent.futures.Future[Delivery] = concurrent.futures.Future()

    # ReplySink, the transport's thread ------------------------------------------------

    def on_reply(self, delivery: Delivery) -> bool:
        if self.future.done():
            return False
        try:
            self.future.set_result(delivery)
        except concurrent.futures.InvalidStateError:  # a failure won the race
            return False
        return True

    def on_failure(self, error: LeveretError) -> None:
        if not self.future.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # lost a race
                self.future.set_exception(error)

    # The caller -----------------------------------------------------------------------

    def left_s(self) -> float:
        """Seconds until the caller stops waiting (0 once passed)."""
        return max(0.0, self.ends - time.monotonic())

    def wait(self) -> Message:
        """Block until the answer, a failure or the deadline.

        Raises:
            AskTimeout: No answer by the deadline.
            RemoteError: The actor dead-lettered the request.
            InvalidReply: The answer is not the reply type.
            AskInterrupted: The connection replies come on was lost.
            PublishError: The request was not sent (`BrokerUnavailable`: the broker is
                down), or refused.
        """
        try:
            delivery = self.future.result(self.left_s())
        except concurrent.futures.TimeoutError:
            raise self.timeout() from None
        return self.answer(delivery)

    async def wait_async(self) -> Message:
        """`wait`, awaited: the event loop goes on meanwhile (no thread is used)."""
        try:
            async with asyncio.timeout(self.left_s()):
                delivery = await asyncio.wrap_future(self.future)
        except TimeoutError:
            if self.future.done() and not self.future.cancelled():
                delivery = self.future.result()  # it came as the deadline passed: take it
            else:
                raise self.timeout() from None
        return self.answer(delivery)

    def timeout(self) -> AskTimeout:
        """The error of an ask whose deadline passed."""
        return AskTimeout(
            f"no answer from actor {self.actor!r} to request {self.message_id} by its "
            "deadline (is a worker running it? is it slower than the timeout?)",
            actor=self.actor,
            message_id=self.message_id,
        )

    def answer(self, delivery: Delivery) -> Message:
        """The reply `delivery` holds, validated, or the error it reports.

        Raises:
            RemoteError: It reports that the actor dead-lettered the request.
            InvalidReply: Anything else that is not an answer of the reply type.
        """
        return answer_of(
            delivery, self.reply_type, self.actor, self.message_id, self.max_reply_bytes
        )


class Gathering:
    """The `ReplySink` of an ``ask_all``: every actor's first answer, until the deadline
    (or until `expect` actors answered).

    Args:
        topic: The request's topic (errors name it).
        message_id: The request's id.
        timeout_s: How long the caller waits from now.
        expect: Stop waiting once this many actors answered (None: wait to the deadline).
        reply_type: Validate every answer as this class; None: as the class registered for
            the answer's topic in this process.
    """

    def __init__(
        self,
        topic: str,
        message_id: str,
        timeout_s: float,
        *,
        expect: int | None = None,
        reply_type: type[Message] | None = None,
    ) -> None:
        self.topic = topic
        self.message_id = message_id
        self.ends = time.monotonic() + timeout_s
        self.expect = expect
        self.reply_type = reply_type
        self._replies: dict[str, Delivery] = {}
        self._failure: LeveretError | None = None
        self._expired = False
        self._closed = False
        self._changed = threading.Condition()

    def on_reply(self, delivery: Delivery) -> bool:
        actor = _text_header(delivery.headers.get(wire.REPLYING_ACTOR), 255) or "?"
        with self._changed:
            if actor in self._replies or self._closed:  # one per actor: another is late
                return False
            self._replies[actor] = delivery
            self._changed.notify_all()
            return True

    def on_failure(self, error: LeveretError) -> None:
        with self._changed:
            if self._failure is None:
                # Its deadline passed (the in-memory broker's virtual clock): the answers
                # so far are the result, as when the wait ends in real time.
                self._failure = None if isinstance(error, AskTimeout) else error
                self._expired = self._expired or isinstance(error, AskTimeout)
                self._changed.notify_all()

    def _done(self) -> bool:
        return (
            self._failure is not None
            or self._expired
            or (self.expect is not None and len(self._replies) >= self.expect)
        )

    def wait(self) -> dict[str, Message | AskError]:
        """Block until the deadline (or `expect` answers); every answer so far, by actor.

        Raises:
            PublishError: The request was not sent (`BrokerUnavailable`), or refused.
            AskInterrupted: The connection replies come on was lost before any answer.
        """
        with self._changed:
            while not self._done():
                left_s = self.ends - time.monotonic()
                if left_s <= 0:
                    break
                self._changed.wait(left_s)
            replies = self._close()
        return self._results(replies)

    async def wait_async(self) -> dict[str, Message | AskError]:
        """`wait`, awaited: polls without blocking the event loop."""
        while True:
            with self._changed:
                if self._done() or time.monotonic() >= self.ends:
                    replies = self._close()
                    break
            await asyncio.sleep(min(0.005, max(0.0, self.ends - time.monotonic())))
        return self._results(replies)

    def _close(self) -> dict[str, Delivery]:
        """Lock held: no reply is taken from now on; the replies taken. A failure is
        raised only when nothing arrived at all."""
        self._closed = True
        if self._failure is not None and not self._replies:
            raise self._failure
        return dict(self._replies)

    def _results(self, replies: dict[str, Delivery]) -> dict[str, Message | AskError]:
        """Each reply read (outside the lock: the transport's thread never waits for a
        decode): an error reply as its `RemoteError`, an answer validated."""
        results: dict[str, Message | AskError] = {}
        for actor, delivery in replies.items():
            try:
                results[actor] = self._answer(actor, delivery)
            except AskError as exc:
                results[actor] = exc
        return results

    def _answer(self, actor: str, delivery: Delivery) -> Message:
        if _text_header(delivery.headers.get(wire.REPLY_STATUS), 10) == "error":
            raise remote_error(delivery, actor, self.message_id)
        reply_type = self.reply_type or message_class(delivery.topic or "")
        if reply_type is None:
            raise InvalidReply(
                f"the reply of actor {actor!r} has topic {delivery.topic!r}, which no "
                "Message class of this process has; pass reply_type=",
                actor=actor,
                message_id=self.message_id,
            )
        return answer_of(delivery, reply_type, actor, self.message_id)


def answer_of(
    delivery: Delivery,
    reply_type: type[Message],
    actor: str,
    message_id: str,
    max_reply_bytes: int = MAX_REPLY_BYTES,
) -> Message:
    """The answer a reply holds, validated as `reply_type`, or the error it reports.

    Raises:
        RemoteError: The reply says the actor dead-lettered the request.
        InvalidReply: A reply that is neither (no status, too large, not the reply type).
    """
    headers = delivery.headers
    status = headers.get(wire.REPLY_STATUS)
    if isinstance(status, bytes):
        status = status.decode("utf-8", "replace")
    if status == "error":
        raise remote_error(delivery, actor, message_id)
    if status != "ok":
        raise InvalidReply(
            f"a reply to request {message_id} from actor {actor!r} has no valid "
            f"{wire.REPLY_STATUS} header ({_short(status)}): not an answer from Leveret",
            actor=actor,
            message_id=message_id,
        )
    if len(delivery.body) > max_reply_bytes:
        raise InvalidReply(
            f"the reply to request {message_id} from actor {actor!r} is "
            f"{len(delivery.body)} bytes, over the {max_reply_bytes} bytes a reply may be",
            actor=actor,
            message_id=message_id,
        )
    try:
        return decode(delivery.body, reply_type, topic=delivery.topic)
    except DecodeError as exc:
        raise InvalidReply(
            f"the reply to request {message_id} from actor {actor!r} is not a valid "
            f"{reply_type.__name__}: {exc.reason}",
            actor=actor,
            message_id=message_id,
        ) from exc
    except Exception as exc:  # a model validator raised something odd
        raise InvalidReply(
            f"the reply to request {message_id} from actor {actor!r} is not a valid "
            f"{reply_type.__name__}: {type(exc).__name__}: {exc}",
            actor=actor,
            message_id=message_id,
        ) from exc


def remote_error(delivery: Delivery, actor: str, message_id: str) -> RemoteError:
    """The `RemoteError` an ``error`` reply reports (its headers read defensively)."""
    headers = delivery.headers
    replying = _text_header(headers.get(wire.REPLYING_ACTOR)) or actor
    error_type = _text_header(headers.get(wire.ERROR_TYPE))
    error_message = _text_header(headers.get(wire.ERROR_MESSAGE))
    reason = _text_header(headers.get(wire.ERROR_REASON))
    what = f"{error_type}: {error_message}" if error_type else (error_message or reason)
    return RemoteError(
        f"actor {replying!r} failed request {message_id} for good ({reason or 'error'}): {what}",
        actor=replying,
        message_id=message_id,
        error_type=error_type,
        error_message=error_message,
        error_reason=reason,
    )


def _text_header(value: object, limit: int = 2000) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value[:limit] if isinstance(value, str) else ""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = [
    "MAX_REPLY_BYTES",
    "AskError",
    "Asking",
    "Gathering",
    "PendingAsk",
    "RecentlyForgotten",
    "ReplySink",
    "answer_of",
    "remote_error",
]
