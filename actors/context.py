"""`Context` and `AsyncContext`: what a handler knows about the message it is handling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

import structlog
from structlog.typing import FilteringBoundLogger

from leveret.actors import dispatch
from leveret.actors.dispatch import PublishArgs
from leveret.schemas.envelope import Envelope
from leveret.schemas.message import Message

if TYPE_CHECKING:
    from leveret.actors.actor import ActorRef


class _MessageContext:
    """What both kinds of context know: the envelope, the actor and a bound logger."""

    __slots__ = ("actor", "envelope", "log")

    def __init__(
        self, envelope: Envelope, *, actor: str, log: FilteringBoundLogger | None = None
    ) -> None:
        self.envelope = envelope
        self.actor = actor
        self.log: FilteringBoundLogger = (
            log if log is not None else structlog.get_logger("leveret.handler")
        )

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
