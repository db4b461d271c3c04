"""The scheduler's lock, state and publishing in memory: the same protocol as on RabbitMQ
(`leveret.services.scheduling`), in this process; the lock is held until released."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from leveret.actors.actor import Actor
from leveret.schemas.errors import PublishError
from leveret.services.scheduling import SchedulerBackend
from leveret.services.transport import OutgoingMessage, Scheduling

if TYPE_CHECKING:
    from leveret.services.memory.transport import MemoryTransport


class MemorySchedulerBackend(SchedulerBackend):
    """A scheduler's backend on a `MemoryTransport`; `wait` sleeps in real time."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self._closed = False

    def acquire(self) -> bool:
        with self.transport.changed:
            if self._closed:
                return False
            if self.transport.scheduler_leader in (None, self):
                self.transport.scheduler_leader = self
                return True
            return False

    def holding(self) -> bool:
        return self.transport.scheduler_leader is self and not self._closed

    def release(self) -> None:
        with self.transport.changed:
            if self.transport.scheduler_leader is self:
                self.transport.scheduler_leader = None

    def load_state(self) -> dict[str, datetime]:
        with self.transport.changed:
            return dict(self.transport.scheduler_state)

    def save_state(self, state: dict[str, datetime]) -> None:
        with self.transport.changed:
            self.transport.scheduler_state = dict(state)

    def declare(self, actors: Sequence[type[Actor]]) -> None:
        self.transport.declare(actors)

    def publish(self, items: Sequence[OutgoingMessage]) -> list[PublishError | None]:
        result = self.transport.publish_each(items)
        return [result.errors.get(index) for index in range(len(items))]

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def close(self) -> None:
        self.release()
        self._closed = True


class MemoryScheduling(Scheduling):
    """The scheduling role of a `MemoryTransport`: its lock and state live in it.

    Args:
        transport: The transport whose namespace it schedules in.
    """

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport

    def backend(self) -> MemorySchedulerBackend:
        return MemorySchedulerBackend(self.transport)

    def stored_state(self) -> dict[str, datetime]:
        with self.transport.changed:
            return dict(self.transport.scheduler_state)
