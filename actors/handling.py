"""Which message this thread is handling, so that what it publishes carries its correlation id.

The worker runtime marks the message (`handling`, `done_handling`); `Actor.send`,
`publish` and `Context` read its correlation id (`current_correlation_id`).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import TypeAlias

from leveret.schemas import wire
from leveret.schemas.envelope import Envelope, deadline_of

Clock: TypeAlias = Callable[[], float]
"""Seconds since the epoch: the clock an ask's deadline is read on."""
Handled: TypeAlias = "tuple[Envelope, Clock] | None"

_current: contextvars.ContextVar[Handled] = contextvars.ContextVar(
    "leveret_current_envelope", default=None
)


def current_correlation_id() -> str | None:
    """The correlation id of the message being handled on this thread, if any."""
    handled = _current.get()
    return handled[0].correlation_id if handled is not None else None


def time_left() -> float | None:
    """Seconds left until the deadline of the ask being handled on this thread, read on the
    worker's clock (None when it is not an ask): an ask made while answering it waits no
    longer."""
    handled = _current.get()
    if handled is None:
        return None
    envelope, clock = handled
    deadline_s = deadline_of(envelope.headers.get(wire.DEADLINE))
    return None if deadline_s is None else deadline_s - clock()


def handling(envelope: Envelope, clock: Clock = time.time) -> contextvars.Token[Handled]:
    """Mark `envelope` as the message being handled on this thread (for the runtime), its
    deadline (if an ask) read on `clock`."""
    return _current.set((envelope, clock))


def done_handling(token: contextvars.Token[Handled]) -> None:
    """Undo `handling` (for the runtime)."""
    _current.reset(token)
