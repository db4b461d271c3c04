"""`Context`: what a handler knows about the message it is handling."""

from __future__ import annotations

import contextvars
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from actors import dispatch
from schemas.envelope import Envelope
from schemas.message import Message

if TYPE_CHECKING:
    from actors.actor import ActorRef

_current_envelope: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "leveret_current_envelope", default=None
)


def current_correlation_id() -> str | None:
    """The correlation id of the message being handled on this thread, if any."""
    envelope = _current_envelope.get()
    return envelope.correlation_id if envelope is not None else None


class Context:
    """The envelope of the message being handled, a bound logger, and publishing helpers.

    Messages published through the context (or through `Actor.send` / `publish` while the
    handler runs) carry the handled message's correlation id on.

    Attributes:
        envelope: Metadata of the message being handled.
        actor: Name of the actor (its queue, without namespace).
        log: A structlog logger bound to actor, topic, message_id, correlation_id, attempt.
    """

    __slots__ = ("actor", "envelope", "log")

    def __init__(self, envelope: Envelope, *, actor: str, log: Any = None) -> None:
        self.envelope = envelope
        self.actor = actor
        self.log = log if log is not None else structlog.get_logger("leveret.handler")

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


def handling(envelope: Envelope) -> contextvars.Token[Envelope | None]:
    """Mark `envelope` as the message being handled on this thread (for the runtime)."""
    return _current_envelope.set(envelope)


def done_handling(token: contextvars.Token[Envelope | None]) -> None:
    """Undo `handling` (for the runtime)."""
    _current_envelope.reset(token)
