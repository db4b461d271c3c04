"""`Context` and `AsyncContext`: what a handler knows about the message it is handling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Unpack

import structlog
from structlog.typing import FilteringBoundLogger

from leveret.actors import dispatch
from leveret.actors.dispatch import AskArgs, PublishArgs
from leveret.schemas.envelope import Envelope
from leveret.schemas.errors import InvalidArgument
from leveret.schemas.message import Message

if TYPE_CHECKING:
    from leveret.actors.actor import ActorRef


class _MessageContext:
    """What both kinds of context know: the envelope, the actor, a bound logger, and the
    answer to an ask (`reply`)."""

    __slots__ = ("actor", "answer", "asked", "envelope", "log", "reply_type")

    def __init__(
        self,
        envelope: Envelope,
        *,
        actor: str,
        log: FilteringBoundLogger | None = None,
        reply_type: type[Message] | None = None,
        asked: bool = False,
    ) -> None:
        self.envelope = envelope
        self.actor = actor
        self.log: FilteringBoundLogger = (
            log if log is not None else structlog.get_logger("leveret.handler")
        )
        self.reply_type = reply_type
        self.asked = asked
        """Whether the message being handled is an ask, whose caller waits for an answer."""
        self.answer: Message | None = None
        """What `reply` was given (the worker sends it once the handler returns)."""

    def reply(self, message: Message) -> None:
        """Answer the ask being handled with `message`, instead of returning it.

        The answer goes to the caller when the handler returns (not if it raises: a retry
        answers instead). For a message that is not an ask it is ignored.

        Args:
            message: An instance of the handler's reply type (its return annotation,
                e.g. ``-> Quote | None``).

        Raises:
            InvalidArgument: The handler declares no reply type, `message` is not one, or
                it answered already.
        """
        if self.reply_type is None:
            raise InvalidArgument(
                f"actor {self.actor!r}: this handler declares no reply type; annotate its "
                "return with the Message class it answers with (-> Quote | None)"
            )
        if not isinstance(message, self.reply_type):
            raise InvalidArgument(
                f"actor {self.actor!r}: ctx.reply takes a {self.reply_type.__name__} (the "
                f"handler's reply type), not {type(message).__name__}"
            )
        if self.answer is not None:
            raise InvalidArgument(f"actor {self.actor!r}: ctx.reply was called twice")
        self.answer = message

    @property
    def message_id(self) -> str:
        """Id of the message being handled, stable across retries."""
        return self.envelope.message_id

    @property
    def correlation_id(self) -> str | None:
        """Correlation id carried on to every message published from this handler."""
        return self.envelope.correlation_id

    @property
    def attempt(self) -> int:
        """1 on the first delivery, incremented by each retry."""
        return self.envelope.attempt

    def _carried(self, options: PublishArgs) -> PublishArgs:
        return dispatch.carried(options, self.correlation_id)


class Context(_MessageContext):
    """The envelope of the message being handled, a bound logger, and publishing helpers.

    Messages published through the context (or through `Actor.send` / `publish` while the
    handler runs) carry the handled message's correlation id on.

    Attributes:
        envelope: Metadata of the message being handled.
        actor: Name of the actor (its queue, without namespace).
        log: A structlog logger bound to actor, topic, message_id, correlation_id, attempt.
    """

    __slots__ = ()

    def publish(self, message: Message, **options: Unpack[PublishArgs]) -> str:
        """Publish to every actor bound to the message's topic, carrying the correlation id.

        Args:
            message: The message.
            **options: `PublishArgs` (the correlation id is the handled message's unless
                given).

        Returns:
            The new message's id.
        """
        return dispatch.current().publish(message, **self._carried(options))

    def send(self, actor: ActorRef, message: Message, **options: Unpack[PublishArgs]) -> str:
        """Send to one actor's queue, carrying the correlation id (`Actor.send`).

        Args:
            actor: The actor.
            message: A message one of its handlers takes.
            **options: As for `publish`.

        Returns:
            The new message's id.
        """
        return dispatch.current().send(actor, message, **self._carried(options))

    def ask(self, actor: ActorRef, message: Message, **options: Unpack[AskArgs]) -> Any:
        """Ask another actor and wait for its answer (`Actor.ask`), carrying the
        correlation id; while answering an ask, never past that ask's deadline.

        Returns:
            The answer, an instance of that handler's reply type.
        """
        options = dispatch.ask_options(self._carried_ask(options))
        return dispatch.asker().ask(actor, message, **options)

    def _carried_ask(self, options: AskArgs) -> AskArgs:
        if options.get("correlation_id") is None:
            options["correlation_id"] = self.correlation_id
        return options


class AsyncContext(_MessageContext):
    """`Context` for ``async def`` handlers: `publish` and `send` are awaited.

    They wait for the broker's confirm without blocking the event loop, so the worker's
    other async handlers go on meanwhile.

    Attributes:
        envelope: Metadata of the message being handled.
        actor: Name of the actor (its queue, without namespace).
        log: A structlog logger bound to actor, topic, message_id, correlation_id, attempt.
    """

    __slots__ = ()

    async def publish(self, message: Message, **options: Unpack[PublishArgs]) -> str:
        """`Context.publish`, awaited: returns once the broker confirmed the message."""
        return await dispatch.publish_async(message, **self._carried(options))

    async def send(self, actor: ActorRef, message: Message, **options: Unpack[PublishArgs]) -> str:
        """`Context.send`, awaited: returns once the broker confirmed the message."""
        return await dispatch.send_async(actor, message, **self._carried(options))

    async def ask(self, actor: ActorRef, message: Message, **options: Unpack[AskArgs]) -> Any:
        """`Context.ask`, awaited: the event loop (and the worker's other async handlers)
        goes on while the answer is awaited."""
        if options.get("correlation_id") is None:
            options["correlation_id"] = self.correlation_id
        options = dispatch.ask_options(options)
        return await dispatch.asker().ask_async(actor, message, **options)

    ask_async = ask
    """The same as `ask` (the name `Actor.ask_async` has)."""
