"""`Context` and `AsyncContext`: what a handler knows about the message it is handling."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from structlog.typing import FilteringBoundLogger

from leveret.actors import dispatch
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

    def publish(
        self, message: Message, *, delay: dispatch.Delay = None, eta: datetime | None = None
    ) -> str:
        """Publish to every actor bound to the message's topic, carrying the correlation id.

        Args:
            message: The message.
            delay: Deliver after this long (seconds or `timedelta`).
            eta: Deliver at this timezone-aware time instead.

        Returns:
            The new message's id.
        """
        return dispatch.current().publish(
            message, delay=delay, eta=eta, correlation_id=self.correlation_id
        )

    def send(
        self,
        actor: ActorRef,
        message: Message,
        *,
        delay: dispatch.Delay = None,
        eta: datetime | None = None,
    ) -> str:
        """Send to one actor's queue, carrying the correlation id.

        Args:
            actor: The actor.
            message: A message one of its handlers takes.
            delay: Deliver after this long (seconds or `timedelta`).
            eta: Deliver at this timezone-aware time instead.

        Returns:
            The new message's id.
        """
        return dispatch.current().send(
            actor, message, delay=delay, eta=eta, correlation_id=self.correlation_id
        )


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

    async def publish(
        self, message: Message, *, delay: dispatch.Delay = None, eta: datetime | None = None
    ) -> str:
        """Publish to every actor bound to the message's topic, carrying the correlation id.

        Args:
            message: The message.
            delay: Deliver after this long (seconds or `timedelta`).
            eta: Deliver at this timezone-aware time instead.

        Returns:
            The new message's id, once the broker confirmed it.
        """
        return await dispatch.publish_async(
            message, delay=delay, eta=eta, correlation_id=self.correlation_id
        )

    async def send(
        self,
        actor: ActorRef,
        message: Message,
        *,
        delay: dispatch.Delay = None,
        eta: datetime | None = None,
    ) -> str:
        """Send to one actor's queue, carrying the correlation id.

        Args:
            actor: The actor.
            message: A message one of its handlers takes.
            delay: Deliver after this long (seconds or `timedelta`).
            eta: Deliver at this timezone-aware time instead.

        Returns:
            The new message's id, once the broker confirmed it.
        """
        return await dispatch.send_async(
            actor, message, delay=delay, eta=eta, correlation_id=self.correlation_id
        )
