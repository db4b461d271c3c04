"""Retry policies: how many attempts, how long to wait between them, which errors retry."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from leveret.actors.checks import is_count
from leveret.actors.control import Reject, Retry
from leveret.schemas.errors import DefinitionError

Backoff = Callable[[int], float]
"""Seconds to wait after failed attempt number `n` (1 for the first) before the next one."""


def exponential(
    *, first_s: float = 1.0, max_s: float = 600.0, factor: float = 2.0, jitter: bool = True
) -> Backoff:
    """Backoff that grows by `factor` from `first_s` up to `max_s`.

    With `jitter` each delay is drawn uniformly from [delay/2, delay], so that many messages
    failing together (a database outage) do not all come back in the same second.

    Raises:
        DefinitionError: A non-positive `first_s`, `max_s` below `first_s`, or `factor` < 1.
    """
    if first_s <= 0 or max_s < first_s or factor < 1:
        raise DefinitionError(
            f"exponential backoff needs 0 < first_s <= max_s and factor >= 1 "
            f"(got first_s={first_s}, max_s={max_s}, factor={factor})"
        )

    def backoff(attempt: int) -> float:
        delay = min(max_s, first_s * factor ** (attempt - 1))
        return random.uniform(delay / 2, delay) if jitter else delay

    return backoff


def fixed(delay_s: float) -> Backoff:
    """The same delay after every failed attempt.

    Raises:
        DefinitionError: A negative delay.
    """
    if delay_s < 0:
        raise DefinitionError(f"fixed backoff needs delay_s >= 0, not {delay_s}")
    return lambda _attempt: delay_s


@dataclass(frozen=True)
class RetryPolicy:
    """What happens when a handler raises.

    ```python
    class Billing(Actor):
        retry = RetryPolicy(attempts=5, backoff=exponential(first_s=1, max_s=600))

        @handler(retry=RetryPolicy(attempts=1))      # this handler never retries
        def refund(self, msg: RefundAsked) -> None: ...
    ```

    Args:
        attempts: Attempts in all, the first included; 1 means never retry.
        backoff: Seconds before attempt n+1 after attempt n failed (`exponential`, `fixed`,
            or any callable taking the failed attempt's number).
        retry_on: Exceptions that are retried; others go to the dead-letter queue at once.
        dead_letter_on: Exceptions that go to the dead-letter queue at once even though they
            match `retry_on` (e.g. ``ValueError`` under ``Exception``).

    Raises:
        DefinitionError: `attempts` below 1, or exception lists that are not exception types.
    """

    attempts: int = 5
    backoff: Backoff = field(default_factory=exponential)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dead_letter_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if not is_count(self.attempts):
            raise DefinitionError(
                f"RetryPolicy.attempts must be an int >= 1, not {self.attempts!r}"
            )
        if not callable(self.backoff):
            raise DefinitionError("RetryPolicy.backoff must be callable: attempt -> seconds")
        for name in ("retry_on", "dead_letter_on"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(
                isinstance(kind, type) and issubclass(kind, BaseException) for kind in value
            ):
                raise DefinitionError(f"RetryPolicy.{name} must be a tuple of exception types")

    def next_delay_s(self, attempt: int, error: BaseException) -> object:
        """Seconds to wait before retrying after `attempt` failed with `error`.

        Returns:
            The delay as `Retry(delay=...)` or the backoff gave it, or None when the message
            goes to the dead-letter queue: attempts are used up, the handler raised `Reject`,
            or the error is not one that retries. The worker checks the delay (a number from
            0 up to the longest delay RabbitMQ can hold) and dead-letters the message with
            reason ``invalid_retry`` when it is not one.

        Raises:
            Exception: Whatever the backoff callable raises.
        """
        if attempt >= self.attempts or isinstance(error, Reject):
            return None
        if isinstance(error, Retry):
            return error.delay_s if error.delay_s is not None else self.backoff(attempt)
        if isinstance(error, self.dead_letter_on) or not isinstance(error, self.retry_on):
            return None
        return self.backoff(attempt)


NO_RETRY = RetryPolicy(attempts=1)
"""A policy that dead-letters on the first failure."""
