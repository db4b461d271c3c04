"""Exceptions a handler raises on purpose to steer what happens to its message."""

from __future__ import annotations

from schemas.errors import HandlerSignal


class Retry(HandlerSignal):
    """Ask for the message to be handled again later.

    Until retry policies land, a retry request is treated like any other failure: the message
    goes to the actor's dead-letter queue with this exception recorded.

    Args:
        reason: Why, for logs and headers.
        delay_s: How long to wait before the next attempt, in seconds.
    """

    def __init__(self, reason: str = "retry requested", *, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class Reject(HandlerSignal):
    """Send the message straight to the actor's dead-letter queue, without retries.

    Args:
        reason: Why the message is rejected; stored in the dead letter's headers.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
