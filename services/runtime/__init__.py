"""The worker runtime, the same for every broker.

`Worker` runs handlers on its threads over a `Consumer` (the broker's part); `Executor`
decides what happens to one delivery; `timelimits` interrupts handlers past their limit.
"""

from leveret.services.delivery import Delivery, Outcome
from leveret.services.runtime.consumer import Consumer, Job
from leveret.services.runtime.execution import Executor
from leveret.services.runtime.stats import Stats
from leveret.services.runtime.worker import (
    EXIT_FATAL,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_SHUTDOWN_TIMEOUT,
    Worker,
)

__all__ = [
    "EXIT_FATAL",
    "EXIT_INTERNAL_ERROR",
    "EXIT_OK",
    "EXIT_SHUTDOWN_TIMEOUT",
    "Consumer",
    "Delivery",
    "Executor",
    "Job",
    "Outcome",
    "Stats",
    "Worker",
]
