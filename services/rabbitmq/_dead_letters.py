"""Internal: `RabbitDeadLetters`, the dead-letter role of the RabbitMQ transport.

Listing, finding and replaying are each one pass over an actor's ``.dlq``
(`_dlq_pass.run_pass`); every operation on one ``.dlq``, purging included, holds its lock
(`_dlq_pass.dlq_lock`), so they take turns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from leveret.services.delivery import Delivery
from leveret.services.rabbitmq._admin import AdminChannel, message_count, require_queue
from leveret.services.rabbitmq._dlq_pass import dlq_lock, run_pass
from leveret.services.topology import naming
from leveret.services.transport import DeadLetterFilter, DeadLetters, OnReplay


@dataclass(frozen=True, slots=True)
class RabbitDeadLetters(DeadLetters):
    """The dead-letter queues of one namespace on a RabbitMQ broker.

    Attributes:
        url: The broker's AMQP URL (each operation opens a connection of its own).
        namespace: The namespace whose actors' ``.dlq``s these are.
    """

    url: str = field(repr=False)  # holds credentials
    namespace: str

    def page(
        self, queue: str, *, limit: int, offset: int, where: DeadLetterFilter | None = None
    ) -> list[Delivery]:
        found: list[Delivery] = []
        position = 0

        def keep(letter: Delivery) -> bool:
            nonlocal position
            if where is not None and not where(letter):
                return False
            if offset <= position < offset + limit:
                found.append(letter)
            position += 1
            return False

        self._pass(queue, keep)
        return found

    def find(self, queue: str, message_id: str) -> Delivery | None:
        found: list[Delivery] = []

        def match(letter: Delivery) -> bool:
            if not found and letter.message_id == message_id:
                found.append(letter)
            return False

        self._pass(queue, match)
        return found[0] if found else None

    def count(self, queue: str) -> int:
        return message_count(self.url, naming.dlq_name(self.namespace, queue))

    def replay(self, queue: str, chosen: DeadLetterFilter, on_replay: OnReplay) -> int:
        return self._pass(queue, chosen, replay=True, on_moved=on_replay)

    def purge(self, queue: str) -> int:
        dlq = naming.dlq_name(self.namespace, queue)
        with AdminChannel(self.url) as channel:
            require_queue(channel, dlq)
            # Under the lock of the other dead-letter operations: a pass holds letters
            # unacked, which a purge would miss and the pass would then put back.
            dlq_lock(channel.connection, naming.dlq_lock(self.namespace, queue), dlq)
            purged = channel.queue_purge(dlq).method.message_count
        return purged or 0

    def _pass(
        self,
        queue: str,
        visit: Callable[[Delivery], bool],
        *,
        replay: bool = False,
        on_moved: Callable[[Delivery], None] | None = None,
    ) -> int:
        """One dead-letter pass (`_dlq_pass.run_pass`) over `queue`'s `.dlq`, locked."""
        actor_queue = naming.queue_name(self.namespace, queue)
        dlq = naming.dlq_name(self.namespace, queue)
        with AdminChannel(self.url) as channel:
            if replay:
                require_queue(channel, actor_queue)
            require_queue(channel, dlq)
            dlq_lock(channel.connection, naming.dlq_lock(self.namespace, queue), dlq)
            return run_pass(
                channel, dlq, visit, queue=actor_queue if replay else None, on_moved=on_moved
            )
