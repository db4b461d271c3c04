"""Which message this thread is handling, so that what it publishes carries its correlation id.

The worker runtime marks the message (`handling`, `done_handling`); `Actor.send`,
`publish` and `Context` read its correlation id (`current_correlation_id`).
"""

from __future__ import annotations

import contextvars

from leveret.schemas import wire
from leveret.schemas.envelope import Envelope, deadline_of

_current_envelope: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "leveret_current_envelope", default=None
)


def current_correlation_id() -> str | None:
    """The correlation id of the message being handled on this thread, if any."""
    envelope = _current_envelope.get()
    return envelope.correlation_id if envelope is not None else None


def current_deadline() -> float | None:
    """The deadline (seconds since the epoch) of the request being handled on this thread,
    if it is an ask: an ask made while handling it waits no longer."""
    envelope = _current_envelope.get()
    return deadline_of(envelope.headers.get(wire.DEADLINE)) if envelope is not None else None


def handling(envelope: Envelope) -> contextvars.Token[Envelope | None]:
    """Mark `envelope` as the message being handled on this thread (for the runtime)."""
    return _current_envelope.set(envelope)


def done_handling(token: contextvars.Token[Envelope | None]) -> None:
    """Undo `handling` (for the runtime)."""
    _current_envelope.reset(token)
