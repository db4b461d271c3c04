"""`RabbitBroker`: the `Broker` on a real RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pika
import pika.exceptions

from actors.actor import Actor, ActorRef
from actors.registry import unique_queues
from schemas.errors import BrokerConnectionError, TopologyError
from services import naming, topology, wire
from services.broker import Broker, Prepared, Worker, select_actors
from services.connection import connection_parameters, describe
from services.execution import Delivery
from services.publisher import Outgoing, Publisher


class RabbitBroker(Broker):
    """`Broker` backed by RabbitMQ; see `Broker` for the arguments.

    Extra Args:
        confirm_timeout_s: How long a publish waits for the broker's confirm.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        auto_declare: bool = True,
        confirm_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(url, namespace=namespace, auto_declare=auto_declare)
        self.publisher = Publisher(
            self.url,
            declare_on_connect=topology.namespace_steps(self.namespace),
            confirm_timeout_s=confirm_timeout_s,
        )

    def _declare(self, actors: list[type[Actor]]) -> None:
        self.publisher.declare(topology.steps(self.namespace, actors))

    def _deliver(self, items: Sequence[Prepared]) -> list[int]:
        events = naming.events_exchange(self.namespace)
        outgoing = []
        for item in items:
            if item.route.queue is None:
                exchange, routing_key = events, item.route.topic
            else:
                exchange, routing_key = "", naming.queue_name(self.namespace, item.route.queue)
            outgoing.append(
                Outgoing(
                    exchange,
                    routing_key,
                    item.body,
                    wire.properties(item.envelope),
                    unroutable_is_error=item.route.queue is not None,
                )
            )
        return self.publisher.publish(outgoing).unroutable

    def delete(self, *actors: ActorRef) -> None:
        names = topology.queue_names(self.namespace, unique_queues(actors))
        with self.admin() as channel:
            for name in names:
                channel.queue_delete(name)
        for cls in unique_queues(actors):
            self._declared.discard(cls)

    def delete_namespace_exchanges(self) -> None:
        """Delete the namespace's own exchanges (events, dead); for tests and teardown."""
        with self.admin() as channel:
            for step in topology.namespace_steps(self.namespace):
                channel.exchange_delete(step.name)

    def admin(self) -> _AdminChannel:
        """A short-lived blocking channel for administrative work (deleting, counting)."""
        return _AdminChannel(self.url)

    def message_count(self, queue: str) -> int:
        """Messages ready in a queue (full name), as the broker counts them."""
        with self.admin() as channel:
            result = channel.queue_declare(queue, passive=True)
            count: int = result.method.message_count
            return count

    def dead_letters(self, actor: ActorRef, *, limit: int = 1000) -> list[Delivery]:
        name = naming.dlq_name(self.namespace, unique_queues([actor])[0].queue)
        found: list[Delivery] = []
        # Fetched without acking: closing the connection puts every one back in order.
        with self.admin() as channel:
            while len(found) < limit:
                method, props, body = channel.basic_get(name, auto_ack=False)
                if method is None:
                    break
                found.append(wire.delivery(method, props, body))
        return found

    def worker(
        self,
        actors: Iterable[ActorRef],
        *,
        threads: int = 8,
        prefetch: int | None = None,
        queues: Iterable[str] | None = None,
        shutdown_timeout_s: float = 30.0,
    ) -> Worker:
        from services.worker import RabbitWorker

        return RabbitWorker(
            self.url,
            self.namespace,
            select_actors(actors, queues),
            threads=threads,
            prefetch=prefetch,
            shutdown_timeout_s=shutdown_timeout_s,
        )

    def close(self) -> None:
        self.publisher.close()


class _AdminChannel:
    """Context manager: a `BlockingConnection` channel, closed on exit."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: pika.BlockingConnection | None = None

    def __enter__(self) -> Any:
        try:
            self._connection = pika.BlockingConnection(
                connection_parameters(self._url, role="admin")
            )
        except pika.exceptions.AMQPError as exc:
            raise BrokerConnectionError(
                f"cannot connect to {naming.redact_url(self._url)}: {describe(exc)}"
            ) from exc
        return self._connection.channel()

    def __exit__(self, exc_type: object, exc: object, _tb: object) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
            raise TopologyError(describe(exc)) from exc
