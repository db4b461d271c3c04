"""Internal: `MemoryConsumer`, the worker runtime's consumer of in-memory queues.

Like RabbitMQ's consumer, it holds at most `prefetch` deliveries unsettled: a feeder thread
hands the runtime the next delivery only once there is room.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from leveret.services.delivery import Outcome
from leveret.services.observability.logs import get_logger
from leveret.services.runtime.consumer import Consumer, Fail, InProcess, Job, Receive
from leveret.services.runtime.worker import EXIT_INTERNAL_ERROR

if TYPE_CHECKING:
    from leveret.services.memory.transport import MemoryTransport

log = get_logger("leveret.worker")


class MemoryConsumer(Consumer):
    """Consumes the queues `names` of a `MemoryTransport`, `prefetch` at a time.

    Args:
        transport: The in-memory broker's transport.
        names: The actor queues to consume (full names).
        prefetch: Deliveries handed out and not yet settled, at most.
    """

    def __init__(self, transport: MemoryTransport, names: Sequence[str], *, prefetch: int) -> None:
        self.transport = transport
        self.names = list(names)
        self.prefetch = prefetch
        self.consuming = threading.Event()
        self._outstanding = 0
        self._stopping = False
        self._feeder: threading.Thread | None = None

    @property
    def presence(self) -> InProcess:
        """In this process; heartbeats are kept by the transport (`leveret status`)."""
        return InProcess(self.transport.heartbeats.append)

    def now(self) -> float:
        return self.transport.clock.now()

    def start(self, receive: Receive, fail: Fail) -> None:
        self._feeder = threading.Thread(
            target=self._feed, args=(receive, fail), name="leveret-memory-feeder", daemon=True
        )
        self._feeder.start()
        self.consuming.set()
        log.info("worker_consuming", queues=sorted(self.names), prefetch=self.prefetch)

    def _feed(self, receive: Receive, fail: Fail) -> None:
        try:
            while True:
                job = self.take(wait=True)
                if job is None:
                    return
                receive(job)
        except Exception as exc:  # like an I/O thread: never die unseen
            log.exception("io_thread_crashed", role="memory")
            self.consuming.clear()
            fail(f"the memory consumer failed: {type(exc).__name__}: {exc}", EXIT_INTERNAL_ERROR)

    def take(self, *, wait: bool = False, advance_clock: bool = False) -> Job | None:
        """The next delivery, within the prefetch.

        Args:
            wait: Block until there is one (or the consumer stops); else return None.
            advance_clock: When nothing is waiting, jump the virtual clock to the next
                delayed message (for `MemoryBroker.join`).
        """
        transport = self.transport
        with transport.changed:
            while True:
                if self._stopping:
                    return None
                if self._outstanding < self.prefetch:
                    taken = transport.take(self.names)
                    if taken is not None:
                        self._outstanding += 1
                        return Job(taken[1], taken[0])
                    due_s = transport.next_due_s()
                    if advance_clock and due_s is not None:
                        transport.clock.advance(due_s - transport.clock.now())
                        continue
                if not wait:
                    return None
                transport.changed.wait()

    def current(self, job: Job) -> bool:
        return True

    def settle(self, job: Job, outcome: Outcome) -> None:
        self.transport.settle(job.queue, job.delivery, outcome)
        self._done()

    def give_back(self, job: Job, *, failed: bool) -> None:
        self.transport.give_back(job.queue, job.delivery)
        self._done()

    def _done(self) -> None:
        with self.transport.changed:
            self._outstanding -= 1
            self.transport.changed.notify_all()

    def stop_consuming(self) -> None:
        self.consuming.clear()
        with self.transport.changed:
            self._stopping = True
            self.transport.changed.notify_all()

    def wait_settled(self, timeout_s: float) -> bool:
        with self.transport.changed:
            return self.transport.changed.wait_for(lambda: self._outstanding <= 0, timeout_s)

    def close(self) -> None:
        self.stop_consuming()
        if self._feeder is not None:
            self._feeder.join(5)

    def alive(self) -> bool:
        return self._feeder is None or self._feeder.is_alive() or self._stopping
