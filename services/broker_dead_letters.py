"""`Broker`'s dead-letter methods: read, count, find, replay and purge an actor's `.dlq`.

A part of `leveret.services.broker.Broker` (which inherits them), kept in a module of its
own; each transport's `leveret.services.transport.DeadLetters` role does the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from leveret.actors.actor import ActorRef
from leveret.actors.registry import unique_queues
from leveret.schemas.errors import InvalidArgument
from leveret.services.delivery import Delivery
from leveret.services.topology import naming
from leveret.services.transport import reporting_ids, with_ids

if TYPE_CHECKING:
    from leveret.services.transport import Transport


class BrokerDeadLetters:
    """An actor's dead letters, through a broker's transport."""

    transport: Transport

    def dead_letters(
        self,
        actor: ActorRef | str,
        *,
        limit: int = 1000,
        offset: int = 0,
        where: Callable[[Delivery], bool] | None = None,
    ) -> list[Delivery]:
        """The messages in an actor's dead-letter queue, oldest first: a page of them.

        Nothing is removed or changed: the dead letters stay, in the same order, until
        replayed or purged (on RabbitMQ, reading them takes one pass over the whole queue,
        which never counts as a failed delivery; see `leveret.services.rabbitmq._dlq_pass`).

        Args:
            actor: The actor, or its queue name (without namespace).
            limit: At most this many.
            offset: Skip this many first (of those `where` picks).
            where: Only the letters for which it returns True (a filter, applied while
                reading: only the page is kept in memory).

        Raises:
            ConfigurationError: The actor has no dead-letter queue (not declared).
            TopologyError: Another dead-letter operation on that queue is running.
            InvalidArgument: A negative limit or offset.
        """
        if limit < 0 or offset < 0:
            raise InvalidArgument(f"limit and offset must be 0 or more, not {limit}, {offset}")
        return self.transport.dead_letters.page(
            _queue_of(self.transport.namespace, actor), limit=limit, offset=offset, where=where
        )

    def dead_letter_count(self, actor: ActorRef | str) -> int:
        """How many dead letters the actor has (nothing is read or changed).

        Raises:
            ConfigurationError: The actor has no dead-letter queue (not declared).
        """
        return self.transport.dead_letters.count(_queue_of(self.transport.namespace, actor))

    def find_dead_letter(self, actor: ActorRef | str, message_id: str) -> Delivery | None:
        """The dead letter with this message id, if there is one (nothing is changed).

        Raises:
            ConfigurationError: The actor has no dead-letter queue (not declared).
            TopologyError: Another dead-letter operation on that queue is running.
        """
        return self.transport.dead_letters.find(
            _queue_of(self.transport.namespace, actor), message_id
        )

    def replay_dead_letters(
        self,
        actor: ActorRef | str,
        *,
        message_ids: set[str] | None = None,
        on_replayed: Callable[[str], None] | None = None,
    ) -> int:
        """Put dead letters back on the actor's queue, attempt count reset to 1.

        Each replayed message keeps its id, topic, correlation id and body; failure headers
        are dropped. Only the letters present when the replay starts are replayed, each
        once, so a replay ends even while a failing handler dead-letters them again. On
        RabbitMQ the publish and the removal of each dead letter are in one transaction: a
        replay interrupted and run again replays each message exactly once.

        Args:
            actor: The actor, or its queue name (without namespace).
            message_ids: Only these; every dead letter when None.
            on_replayed: Called with each message id once it is back on the queue.

        Returns:
            How many were replayed.

        Raises:
            ConfigurationError: The actor's queue or dead-letter queue does not exist.
        """

        return self.transport.dead_letters.replay(
            _queue_of(self.transport.namespace, actor),
            with_ids(message_ids),
            reporting_ids(on_replayed),
        )

    def purge_dead_letters(self, actor: ActorRef | str) -> int:
        """Delete every dead letter of the actor; returns how many the broker removed.

        Raises:
            ConfigurationError: The actor has no dead-letter queue.
            TopologyError: Another dead-letter operation on that queue is running (they
                take turns: a purge would miss the letters a pass holds).
        """
        return self.transport.dead_letters.purge(_queue_of(self.transport.namespace, actor))


def _queue_of(namespace: str, actor: ActorRef | str) -> str:
    """The queue name (without namespace) of an actor, or the name itself, checked."""
    queue = actor if isinstance(actor, str) else unique_queues([actor])[0].queue
    return naming.check_queue(namespace, queue)
