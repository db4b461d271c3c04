"""Internal: the adaptive prefetch, from how long a worker's handlers take.

`PrefetchController` only computes: the consumer (`_consumer.RabbitConsumer._adapt`) feeds it
each handler's duration and applies its `target` with ``basic.qos`` on the I/O thread.
"""

from __future__ import annotations

ADAPT_EVERY_S = 0.2
"""How often a consuming worker looks at its handlers' speed and applies a new prefetch:
often enough that a fast start ramps up within a second, rarely enough that consuming anew
(each change cancels and restarts the consumers) stays cheap."""
MAX_ADAPTIVE_PREFETCH = 200
"""The highest adaptive prefetch, unless the worker runs more than half as many at once."""
FAIR_BACKLOG_S = 0.1
"""Work a worker may hold beyond what its handlers run: at most about this many seconds."""


class PrefetchController:
    """The prefetch a worker should have, from how long its handlers take.

    A worker's handlers need messages waiting while acks travel to the broker and new
    deliveries come back; but every message it holds waiting is one another worker cannot
    run. So the messages waiting beyond one per handler slot (`capacity`: threads, plus the
    event loop's concurrency) are kept to about `FAIR_BACKLOG_S` of work:
    ``capacity + capacity * FAIR_BACKLOG_S / average handler time``, at least the first
    prefetch (twice the threads by default), at most `MAX_ADAPTIVE_PREFETCH` (or twice the
    capacity, if that is more). Fast handlers (a millisecond or less) reach the maximum,
    which drains at raw pika's speed; handlers of 50 ms or more keep the first prefetch,
    so a worker started later gets its share at once.

    The average is an exponentially weighted one of the handler durations (I/O thread
    only). A change smaller than a quarter is not applied (each one consumes anew).
    """

    def __init__(self, prefetch: int, capacity: int) -> None:
        self.capacity = capacity
        self.minimum = prefetch
        self.maximum = max(MAX_ADAPTIVE_PREFETCH, 2 * capacity, prefetch)
        self.current = prefetch
        self.average_s: float | None = None
        self._samples = 0

    def observe(self, handled_s: float) -> None:
        """One handler's duration."""
        average = self.average_s
        self.average_s = handled_s if average is None else average + 0.05 * (handled_s - average)
        self._samples += 1

    def due(self) -> bool:
        """Whether enough was seen since the last look to look again now (besides the
        timer): a prefetch's worth of messages, so a fast start ramps up at once."""
        if self._samples < self.current:
            return False
        self._samples = 0
        return True

    def target(self) -> int:
        """The prefetch to have now (the current one while nothing is known)."""
        average = self.average_s
        if average is None:
            return self.current
        wanted = self.capacity + self.capacity * FAIR_BACKLOG_S / max(average, 1e-6)
        target = int(min(self.maximum, max(self.minimum, wanted)))
        if target in (self.minimum, self.maximum) or abs(target - self.current) > (
            self.current / 4
        ):
            self.current = target
        return self.current
