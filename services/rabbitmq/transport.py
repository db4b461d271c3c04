"""`RabbitTransport`: moving messages and topology on a real RabbitMQ; dead letters,
inspection and scheduling through its role objects."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from leveret.actors.actor import Actor
from leveret.schemas.errors import BrokerConnectionError, BrokerUnavailable, ConfigurationError
from leveret.services import config
from leveret.services.middleware import MiddlewareChain
from leveret.services.rabbitmq._admin import AdminChannel, message_count
from leveret.services.rabbitmq._asking import RabbitAsking
from leveret.services.rabbitmq._consumer import RabbitConsumer
from leveret.services.rabbitmq._dead_letters import RabbitDeadLetters
from leveret.services.rabbitmq._outgoing import Batch, Outgoing, batch_error
from leveret.services.rabbitmq._publisher import Publisher
from leveret.services.rabbitmq._schedule import RabbitScheduling
from leveret.services.rabbitmq._status import RabbitInspection
from leveret.services.runtime.consumer import ConsumerOptions
from leveret.services.topology import declarations as topology
from leveret.services.topology import delays, naming
from leveret.services.topology.addresses import Addresses
from leveret.services.topology.delays import DelayQueues
from leveret.services.transport import (
    OutgoingMessage,
    PublishResult,
    RabbitOptions,
    Transport,
)


class RabbitTransport(Transport):
    """The `Transport` of a RabbitMQ broker: one publishing connection per process; its
    asking (opened at the first ask), dead letters, inspection and scheduling each open
    connections of their own.

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
        self.dead_letters = RabbitDeadLetters(url, namespace)
        self.inspection = RabbitInspection(url, namespace)
        self.scheduling = RabbitScheduling(self)
        self._levels_declared = False
        self.asking: RabbitAsking = RabbitAsking(
            url,
            namespace,
            connect_timeout_s=self.options.connect_timeout_s,
            chain=lambda: self.chain,
        )
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

    def unavailable_reason(self, timeout_s: float | None) -> str | None:
        publisher = self.publisher
        return publisher.unavailable_reason(
            publisher.confirm_timeout_s if timeout_s is None else timeout_s
        )

    def publish(self, items: Sequence[OutgoingMessage], timeout_s: float | None) -> PublishResult:
        return self._publish(items, raise_errors=True, timeout_s=timeout_s)

    def publish_each(self, items: Sequence[OutgoingMessage]) -> PublishResult:
        return self._publish(items, raise_errors=False, timeout_s=None)

    def _publish(
        self, items: Sequence[OutgoingMessage], *, raise_errors: bool, timeout_s: float | None
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
        return message_count(self.url, queue)

    def consumer(self, actors: Sequence[type[Actor]], options: ConsumerOptions) -> RabbitConsumer:
        return RabbitConsumer(
            self.url,
            self.namespace,
            actors,
            prefetch=options.prefetch,
            capacity=options.capacity,
            adaptive=options.adaptive,
            delay_queues=self.delay_queues,
            connect_timeout_s=self.options.connect_timeout_s,
        )

    def use_middleware(self, middleware: MiddlewareChain) -> None:
        super().use_middleware(middleware)
        self.publisher.middleware = self.middleware

    def close(self) -> None:
        self.asking.close()
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
