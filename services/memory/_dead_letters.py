"""Internal: `MemoryDeadLetters`, the dead-letter role of the in-memory transport."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from leveret.schemas.errors import NotFound
from leveret.services.delivery import Delivery
from leveret.services.operations.deadletters import replayed
from leveret.services.topology import naming
from leveret.services.transport import DeadLetterFilter, DeadLetters, OnReplay

if TYPE_CHECKING:
    from leveret.services.memory.transport import MemoryTransport


class MemoryDeadLetters(DeadLetters):
    """The dead-letter queues of a `MemoryTransport` (each operation under its lock).

    Args:
        transport: The transport whose queues they are.
    """

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport

    def page(
        self, queue: str, *, limit: int, offset: int, where: DeadLetterFilter | None = None
    ) -> list[Delivery]:
        with self.transport.changed:
            letters = self._letters(queue)
            picked = [x for x in letters if where is None or where(x)]
            return picked[offset : offset + limit]

    def count(self, queue: str) -> int:
        with self.transport.changed:
            return len(self._letters(queue))

    def find(self, queue: str, message_id: str) -> Delivery | None:
        with self.transport.changed:
            for letter in self._letters(queue):
                if letter.message_id == message_id:
                    return letter
        return None

    def replay(self, queue: str, chosen: DeadLetterFilter, on_replay: OnReplay) -> int:
        transport = self.transport
        with transport.changed:
            letters = self._letters(queue)
            back = transport.addresses.queue(queue)
            kept: deque[Delivery] = deque()
            count = 0
            for letter in letters:
                if chosen(letter):
                    transport.route(back, replayed(letter))
                    count += 1
                    on_replay(letter)
                else:
                    kept.append(letter)
            letters.clear()
            letters.extend(kept)
            transport.changed.notify_all()
        return count

    def purge(self, queue: str) -> int:
        with self.transport.changed:
            letters = self._letters(queue)
            count = len(letters)
            letters.clear()
        return count

    def _letters(self, queue: str) -> deque[Delivery]:
        """The dead-letter queue of `queue` (lock held).

        Raises:
            NotFound: It does not exist (the actor was never declared).
        """
        dlq = naming.dlq_name(self.transport.namespace, queue)
        letters = self.transport.queues.get(dlq)
        if letters is None:
            raise NotFound(f"no dead-letter queue {dlq!r}")
        return letters
