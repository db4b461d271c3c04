"""`RabbitTransport`: moving messages, topology and dead letters on a real RabbitMQ."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from datetime import datetime

from leveret.actors.actor import Actor
from leveret.schemas.errors import BrokerConnectionError, BrokerUnavailable, ConfigurationError
from leveret.services import config
from leveret.services.delivery import Delivery
from leveret.services.middleware import MiddlewareChain
from leveret.services.rabbitmq._admin import AdminChannel, require_queue
from leveret.services.rabbitmq._consumer import RabbitConsumer
from leveret.services.rabbitmq._dlq_pass import dlq_lock, run_pass
from leveret.services.rabbitmq._outgoing import Batch, Outgoing, batch_error
from leveret.services.rabbitmq._publisher import Publisher
from leveret.services.rabbitmq._schedule import RabbitSchedulerBackend
from leveret.services.rabbitmq._status import queue_figures, recent_heartbeats
from leveret.services.scheduling import SchedulerBackend
from leveret.services.topology import declarations as topology
from leveret.services.topology import delays, naming
from leveret.services.topology.addresses import Addresses
from leveret.services.topology.delays import DelayQueues
from leveret.services.transport import (
    Chosen,
    OutgoingMessage,
    PublishResult,
    QueueFigures,
    RabbitOptions,
    Replayed,
    Transport,
)


class RabbitTransport(Transport):
    """The `Transport` of a RabbitMQ broker: one publishing connection per process.

    Args:
        url: AMQP URL.
        namespace: Prefix of every exchange and queue.
        options: Its options (confirm timeout).
    """

    def __init__(self, url: str, namespace: str, options: RabbitOptions | None = None) -> None:
        self.url = url
        self.namespace = namespace
        self.options = options or RabbitOptions()
        self.delay_queues = delay_queues_for(url, self.options.delay_queues)
        self.addresses = Addresses(namespace, self.delay_queues)
        self._levels_declared = False
        self.publisher = Publisher(
            url,
            declare_on_connect=topology.namespace_steps(namespace),
            confirm_timeout_s=self.options.confirm_timeout_s,
            connect_timeout_s=self.options.connect_timeout_s,
        )

    def declare(self, actors: Sequence[type[Actor]], *, timeout_s: float | None = None) -> None:
        self.publisher.declare(
            topology.steps(
                self.namespace,
                actors,
                with_delay_levels=not self._levels_declared,
                delay_queues=self.delay_queues,
            ),
            **({} if timeout_s is None else {"timeout_s": timeout_s}),
        )
        self._levels_declared = True

    def scheduler_backend(self) -> SchedulerBackend:
        return RabbitSchedulerBackend(self.url, self.namespace, self)

    def stored_schedule_state(self) -> dict[str, datetime]:
        backend = RabbitSchedulerBackend(self.url, self.namespace, self)
        try:
            return backend.load_state()
        finally:
            backend.close()

    def unavailable_reason(self, timeout_s: float | None) -> str | None:
        publisher = self.publisher
        return publisher.unavailable_reason(
            publisher.confirm_timeout_s if timeout_s is None else timeout_s
        )

    def publish(
        self,
        items: Sequence[OutgoingMessage],
        *,
        raise_errors: bool = True,
        timeout_s: float | None = None,
    ) -> PublishResult:
        if not self._levels_declared and any(item.delay_s > 0 for item in items):
            self._declare_levels_before_publishing()
        batch = self.publisher.publish(
            self._outgoing(items), raise_errors=raise_errors, timeout_s=timeout_s
        )
        return _publish_result(batch, items)

    async def publish_async(
        self, items: Sequence[OutgoingMessage], *, timeout_s: float | None = None
    ) -> PublishResult:
        if not self._levels_declared and any(item.delay_s > 0 for item in items):
            await asyncio.to_thread(self._declare_levels_before_publishing)  # once per process
        batch = await self.publisher.publish_async(self._outgoing(items), timeout_s=timeout_s)
        return _publish_result(batch, items)

    def _declare_levels(self) -> None:
        self.publisher.declare(topology.level_steps(self.namespace, self.delay_queues))
        self._levels_declared = True

    def _declare_levels_before_publishing(self) -> None:
        """`_declare_levels` for a delayed publish: a broker that cannot be reached is the
        publish's `BrokerUnavailable` (nothing was sent)."""
        try:
            self._declare_levels()
        except BrokerConnectionError as exc:
            raise BrokerUnavailable(f"{exc}; nothing was sent") from exc

    def _outgoing(self, items: Sequence[OutgoingMessage]) -> list[Outgoing]:
        outgoing = []
        for item in items:
            queue = item.route.queue
            address = self.addresses.publish(
                queue=queue, topic=item.route.topic, delay_s=item.delay_s
            )
            # Positional: one per message. No properties: they are built from the envelope
            # as the message is written (on the I/O thread). `unroutable_is_error` for sends.
            outgoing.append(
                Outgoing(
                    address.exchange,
                    address.routing_key,
                    item.body,
                    None,
                    queue is not None and item.delay_s == 0,
                    item.envelope,
                )
            )
        return outgoing

    def delete(self, actors: Sequence[type[Actor]]) -> None:
        with self.admin() as channel:
            for name in topology.queue_names(self.namespace, actors):
                channel.queue_delete(name)

    def delete_namespace_exchanges(self) -> None:
        with self.admin() as channel:
            every = topology.namespace_steps(self.namespace)
            every += topology.level_steps(self.namespace, "classic")
            every += topology.level_steps(self.namespace, "quorum")  # either may exist
            for step in every:
                if step.kind == "exchange":
                    channel.exchange_delete(step.name)
                elif step.kind == "queue":
                    channel.queue_delete(step.name)
            channel.queue_delete(naming.scheduler_state(self.namespace))
            channel.queue_delete(naming.status_queue(self.namespace))
            channel.exchange_delete(naming.heartbeats_exchange(self.namespace))
        self._levels_declared = False

    def admin(self) -> AdminChannel:
        """A short-lived blocking channel for administrative work (deleting, counting)."""
        return AdminChannel(self.url)

    def message_count(self, queue: str) -> int:
        """Messages ready in a queue (full name), as the broker counts them.

        Raises:
            NotFound: No such queue.
        """
        with self.admin() as channel:
            require_queue(channel, queue)
            count: int = channel.queue_declare(queue, passive=True).method.message_count
            return count

    def dead_letters(
        self, queue: str, *, limit: int, offset: int, where: Chosen | None = None
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

    def find_dead_letter(self, queue: str, message_id: str) -> Delivery | None:
        found: list[Delivery] = []

        def match(letter: Delivery) -> bool:
            if not found and letter.message_id == message_id:
                found.append(letter)
            return False

        self._pass(queue, match)
        return found[0] if found else None

    def dead_letter_count(self, queue: str) -> int:
        return self.message_count(naming.dlq_name(self.namespace, queue))

    def replay_dead_letters(self, queue: str, chosen: Chosen, on_replayed: Replayed) -> int:
        return self._pass(queue, chosen, replay=True, on_moved=on_replayed)

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
        with self.admin() as channel:
            if replay:
                require_queue(channel, actor_queue)
            require_queue(channel, dlq)
            dlq_lock(channel.connection, naming.dlq_lock(self.namespace, queue), dlq)
            return run_pass(
                channel, dlq, visit, queue=actor_queue if replay else None, on_moved=on_moved
            )

    def purge_dead_letters(self, queue: str) -> int:
        dlq = naming.dlq_name(self.namespace, queue)
        with self.admin() as channel:
            require_queue(channel, dlq)
            # Under the lock of the other dead-letter operations: a pass holds letters
            # unacked, which a purge would miss and the pass would then put back.
            dlq_lock(channel.connection, naming.dlq_lock(self.namespace, queue), dlq)
            purged = channel.queue_purge(dlq).method.message_count
        return purged or 0

    def consumer(
        self,
        actors: Sequence[type[Actor]],
        *,
        prefetch: int,
        capacity: int,
        adaptive: bool = False,
    ) -> RabbitConsumer:
        return RabbitConsumer(
            self.url,
            self.namespace,
            actors,
            prefetch=prefetch,
            capacity=capacity,
            adaptive=adaptive,
            delay_queues=self.delay_queues,
            connect_timeout_s=self.options.connect_timeout_s,
        )

    def recent_heartbeats(self, first_wait_s: float) -> list[bytes]:
        return recent_heartbeats(self.url, self.namespace, first_wait_s)

    def queue_figures(self, queues: Sequence[str]) -> dict[str, QueueFigures]:
        return queue_figures(self.url, queues)

    def use_middleware(self, middleware: MiddlewareChain) -> None:
        super().use_middleware(middleware)
        self.publisher.middleware = self.middleware

    def close(self) -> None:
        self.publisher.close()


def _publish_result(batch: Batch, items: Sequence[OutgoingMessage]) -> PublishResult:
    errors = {
        index: batch_error(batch, index, items[index].envelope.message_id) for index in batch.errors
    }
    return PublishResult(batch.unroutable, errors)


def delay_queues_for(url: str, explicit: DelayQueues | None) -> DelayQueues:
    """The delay levels' queue type: `explicit`, else ``$LEVERET_DELAY_QUEUES``, else
    ``quorum`` when `url` names several nodes (a cluster: replicated levels survive a node's
    loss) and ``classic`` for one (cheaper; see docs/failure-handling.md).

    Raises:
        ConfigurationError: Another value than ``classic`` or ``quorum``.
    """
    by_nodes = "quorum" if len(config.broker_urls(url)) > 1 else "classic"
    chosen = explicit or os.environ.get(delays.DELAY_QUEUES_ENV) or by_nodes
    if chosen not in ("classic", "quorum"):
        raise ConfigurationError(
            f"delay queues must be 'classic' or 'quorum', not {chosen!r} "
            f"(RabbitOptions.delay_queues or ${delays.DELAY_QUEUES_ENV})"
        )
    return chosen  # type: ignore[return-value]  # checked just above
