"""`Broker`'s request/reply methods: `ask`, `ask_async` and `ask_all`.

A part of `leveret.services.broker.Broker` (which inherits them), kept in a module of its
own; how a request travels and is answered is in `leveret.services.asking`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Unpack

from leveret.actors import dispatch
from leveret.actors.actor import Actor, ActorRef
from leveret.actors.dispatch import DEFAULT_ASK_TIMEOUT_S, MAX_ASK_TIMEOUT_S, AskArgs
from leveret.schemas.errors import AskError, AskTimeout, InvalidArgument
from leveret.schemas.message import Message
from leveret.services.asking import Gathering, PendingAsk
from leveret.services.publishing import PublishOptions, publish_options

if TYPE_CHECKING:
    from leveret.services.middleware import MiddlewareChain
    from leveret.services.publishing import Outbound
    from leveret.services.transport import OutgoingMessage, Transport


class BrokerAsks:
    """Asking actors through a broker: a request, and its answer awaited by deadline."""

    transport: Transport
    middleware: MiddlewareChain
    auto_declare: bool
    _declared: set[type[Actor]]
    _outbound: Outbound

    def declare_on_first_use(self, actor: ActorRef, *, timeout: float | None = None) -> None:
        raise NotImplementedError  # Broker's

    def ask(self, actor: ActorRef, message: Message, **options: Unpack[AskArgs]) -> Any:
        """Ask `actor` and wait for its answer (`Actor.ask` says it all).

        Args:
            actor: The actor (class or `@actor` function).
            message: A message one of its handlers takes and answers.
            **options: `AskArgs`: timeout (10 s by default), correlation id.

        Returns:
            The answer, an instance of the handler's reply type.

        Raises:
            NotHandled: No handler takes the message, or it declares no reply type.
            AskTimeout: No answer by the deadline.
            RemoteError: The actor dead-lettered the request (or answered with no valid
                answer).
            InvalidReply: The answer is not the reply type.
            AskInterrupted: The connection answers come on was lost meanwhile.
            BrokerUnavailable: The broker cannot be reached: nothing was sent.
            PublishError: The request was not stored (its queue does not exist).
            InvalidArgument: An invalid option.
        """
        cls, checked, timeout_s = self._checked(actor, message, options)
        begun, item = time.monotonic(), None
        try:
            self.declare_on_first_use(cls, timeout=timeout_s)
            pending, item = self._send_request(cls, message, checked, _left(timeout_s, begun))
            answer = pending.wait()
        except BaseException as exc:
            self._asked(cls.queue, item, exc, begun)
            raise
        self._asked(cls.queue, item, None, begun)
        return answer

    async def ask_async(self, actor: ActorRef, message: Message, **options: Unpack[AskArgs]) -> Any:
        """`ask` for asyncio code: the answer is awaited without blocking the event loop
        (no thread waits for it). Arguments, result and errors are `ask`'s; the first ask
        to an actor declares its queue (with `auto_declare`) first, in a thread."""
        cls, checked, timeout_s = self._checked(actor, message, options)
        begun, item = time.monotonic(), None
        try:
            if self.auto_declare and cls not in self._declared:
                await asyncio.to_thread(self.declare_on_first_use, cls, timeout=timeout_s)
            pending, item = self._send_request(cls, message, checked, _left(timeout_s, begun))
            answer = await pending.wait_async()
        except BaseException as exc:
            self._asked(cls.queue, item, exc, begun)
            raise
        self._asked(cls.queue, item, None, begun)
        return answer

    def ask_all(
        self,
        message: Message,
        *,
        timeout: float | None = None,
        expect: int | None = None,
        reply_type: type[Message] | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Message | AskError]:
        """Publish `message` by topic as a request, and gather the answers of every actor
        bound to it that arrive by the deadline ("ask every shard").

        Args:
            message: The request; every actor whose queue is bound to its topic gets it.
            timeout: Seconds to gather answers for (10 by default): the call returns then,
                with what arrived (it does not know how many actors there are).
            expect: Return as soon as this many actors answered.
            reply_type: The class every answer must be; by default each answer is read as
                the class its topic names in this process.
            correlation_id: As for `ask`.

        Returns:
            Each actor's (queue name's) answer, or the `AskError` it reported
            (`RemoteError`) or that reading its answer raised (`InvalidReply`); one per
            actor, in the order they came.

        Raises:
            BrokerUnavailable: The broker cannot be reached: nothing was sent.
            PublishError: No actor's queue is bound to the topic.
            AskInterrupted: The connection was lost before any answer came.
            InvalidArgument: An invalid timeout (or over a day), `expect` or correlation
                id, or a request over 16 MiB.
        """
        if expect is not None and (
            isinstance(expect, bool) or not isinstance(expect, int) or expect < 1
        ):
            raise InvalidArgument(f"expect must be a positive int, not {expect!r}")
        if reply_type is not None and not (
            isinstance(reply_type, type) and issubclass(reply_type, Message)
        ):
            raise InvalidArgument(f"reply_type must be a Message class, not {reply_type!r}")
        if not isinstance(message, Message):
            raise InvalidArgument(f"ask_all takes a Message, not {type(message).__name__}")
        options = dispatch.ask_options({"timeout": timeout, "correlation_id": correlation_id})
        checked = publish_options(**options)
        timeout_s = _bounded(checked.timeout_s)
        deadline_s = self.transport.asking.now() + timeout_s
        gathering: list[Gathering] = []

        def sink(message_id: str) -> Gathering:
            gathering.append(
                Gathering(
                    message.topic(), message_id, timeout_s, expect=expect, reply_type=reply_type
                )
            )
            return gathering[0]

        begun, item = time.monotonic(), None
        try:
            item = self._outbound.ask(message, None, checked, deadline_s, sink)
            results = gathering[0].wait()
        except BaseException as exc:
            self._asked(message.topic(), item, exc, begun)
            raise
        self._asked(message.topic(), item, None, begun)
        return results

    # The steps -------------------------------------------------------------------------

    def _checked(
        self, actor: ActorRef, message: Message, options: AskArgs
    ) -> tuple[type[Actor], PublishOptions, float]:
        """The actor asked and the options, checked before anything is sent; inside a
        handler answering an ask, the correlation id carried and the timeout cut to what
        that ask has left (`dispatch.ask_options`)."""
        unknown = set(options) - {"timeout", "correlation_id"}
        if unknown:  # a delay, say: an ask is answered now or never
            raise TypeError(f"ask got unexpected keyword argument(s) {sorted(unknown)}")
        cls = self._outbound.recipient(actor, message)
        cls.reply_handler_for(message)
        checked = publish_options(**dispatch.ask_options(options))
        return cls, checked, _bounded(checked.timeout_s)

    def _send_request(
        self, cls: type[Actor], message: Message, checked: PublishOptions, timeout_s: float
    ) -> tuple[PendingAsk, OutgoingMessage]:
        reply_type = cls.reply_handler_for(message).reply_type
        assert reply_type is not None  # reply_handler_for checked it
        deadline_s = self.transport.asking.now() + timeout_s
        made: list[PendingAsk] = []

        def sink(message_id: str) -> PendingAsk:
            made.append(PendingAsk(cls.queue, message_id, reply_type, timeout_s))
            return made[0]

        item = self._outbound.ask(message, cls, checked, deadline_s, sink)
        return made[0], item

    def _asked(
        self, target: str, item: OutgoingMessage | None, error: BaseException | None, begun: float
    ) -> None:
        """The ask of `item` ended (None: before its request was built): no answer to it is
        awaited any more (one that comes is counted late), and the middleware's
        ``after_ask`` hears of it."""
        envelope = None
        if item is not None:
            envelope = item.envelope
            self.transport.asking.forget(envelope.message_id)
        self.middleware.after_ask(target, envelope, error, time.monotonic() - begun)


def _bounded(timeout_s: float | None) -> float:
    """An ask's timeout: the default when none, and no longer than an ask may wait.

    Raises:
        InvalidArgument: Over `MAX_ASK_TIMEOUT_S` (a day).
    """
    if timeout_s is None:
        return DEFAULT_ASK_TIMEOUT_S
    if timeout_s > MAX_ASK_TIMEOUT_S:
        raise InvalidArgument(
            f"an ask waits at most {MAX_ASK_TIMEOUT_S:.0f} s (a day), not {timeout_s} s: "
            "for work that long, send a message and have the actor publish its result"
        )
    return timeout_s


def _left(timeout_s: float, begun: float) -> float:
    """What is left of `timeout_s` since `begun` (declaring the actor took some of it).

    Raises:
        AskTimeout: Nothing is left.
    """
    left_s = timeout_s - (time.monotonic() - begun)
    if left_s <= 0:
        raise AskTimeout(f"no time left of the ask's {timeout_s} s after declaring the actor")
    return left_s
