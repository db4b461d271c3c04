"""Exceptions a handler raises on purpose to steer what happens to its message."""

from __future__ import annotations

from datetime import timedelta

from leveret.schemas.errors import HandlerSignal


class Retry(HandlerSignal):
    """Ask for the message to be handled again later.

    The retry policy's attempt count still applies: when attempts are used up the message
    goes to the dead-letter queue with this exception recorded.

    Args:
        reason: Why, for logs and headers.
        delay: How long to wait before the next attempt: seconds or a `timedelta`; by default
            the retry policy's backoff. A delay that is not a number from 0 up to 2^28 - 1 s
            (8.5 years, the longest RabbitMQ's delay levels hold) sends the message to the
            dead-letter queue with reason ``invalid_retry``.
    """

    def __init__(
        self, reason: str = "retry requested", *, delay: float | timedelta | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s: object = delay.total_seconds() if isinstance(delay, timedelta) else delay


class Reject(HandlerSignal):
    """Send the message straight to the actor's dead-letter queue, without retries.

    Args:
        reason: Why the message is rejected; stored in the dead letter's headers.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
