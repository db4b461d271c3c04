"""`RabbitBroker`: the `Broker` on a real RabbitMQ."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pika
import pika.exceptions

from actors.actor import Actor, ActorRef
from actors.registry import unique_queues
from schemas.errors import (
    BrokerConnectionError,
    ConfigurationError,
    PublishError,
    PublishTimeout,
    TopologyError,
)
from services import delays, naming, topology, wire
from services.broker import (
    Broker,
    Delivered,
    Prepared,
    Worker,
    max_body_bytes_or_default,
    select_actors,
)
from services.connection import connection_parameters, describe
from services.deadletter_pass import dlq_lock, run_pass
from services.execution import Delivery, MessageHooks
from services.frames import TolerantSelectConnection
from services.publisher import Outgoing, Publisher
from services.redaction import redact


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
        self._levels_declared = False
        self.publisher = Publisher(
            self.url,
            declare_on_connect=topology.namespace_steps(self.namespace),
            confirm_timeout_s=confirm_timeout_s,
        )

    def _declare(self, actors: list[type[Actor]]) -> None:
        self.publisher.declare(
            topology.steps(self.namespace, actors, with_delay_levels=not self._levels_declared)
        )
        self._levels_declared = True

    def _deliver(self, items: Sequence[Prepared], *, raise_errors: bool = True) -> Delivered:
        events = naming.events_exchange(self.namespace)
        outgoing = []
        for item in items:
            queue = item.route.queue
            if item.delay_s > 0:
                if not self._levels_declared:
                    self.publisher.declare(topology.level_steps(self.namespace))
                    self._levels_declared = True
                exchange = naming.delay_exchange(self.namespace, delays.LEVELS - 1)
                routing_key = delays.routing_key(
                    item.delay_s, queue=queue, topic=item.route.topic if queue is None else None
                )
            elif queue is None:
                exchange, routing_key = events, item.route.topic
            else:
                exchange, routing_key = "", naming.queue_name(self.namespace, queue)
            outgoing.append(
                Outgoing(
                    exchange,
                    routing_key,
                    item.body,
                    wire.properties(item.envelope),
                    unroutable_is_error=queue is not None and item.delay_s == 0,
                )
            )
        batch = self.publisher.publish(outgoing, raise_errors=raise_errors)
        errors: dict[int, PublishError] = {}
        for index, reason in batch.errors.items():
            kind = PublishTimeout if index in batch.timed_out else PublishError
            errors[index] = kind(reason, message_id=items[index].envelope.message_id)
        return Delivered(batch.unroutable, errors)

    def delete(self, *actors: ActorRef) -> None:
        names = topology.queue_names(self.namespace, unique_queues(actors))
        with self.admin() as channel:
            for name in names:
                channel.queue_delete(name)
        for cls in unique_queues(actors):
            self._declared.discard(cls)

    def delete_namespace_exchanges(self) -> None:
        """Delete the namespace's own exchanges and delay levels; for tests and teardown.

        Messages waiting in the delay levels are deleted with them.
        """
        with self.admin() as channel:
            for step in topology.namespace_steps(self.namespace) + topology.level_steps(
                self.namespace
            ):
                if step.kind == "exchange":
                    channel.exchange_delete(step.name)
                elif step.kind == "queue":
                    channel.queue_delete(step.name)
        self._levels_declared = False

    def admin(self) -> _AdminChannel:
        """A short-lived blocking channel for administrative work (deleting, counting)."""
        return _AdminChannel(self.url)

    def message_count(self, queue: str) -> int:
        """Messages ready in a queue (full name), as the broker counts them."""
        with self.admin() as channel:
            result = channel.queue_declare(queue, passive=True)
            count: int = result.method.message_count
            return count

    def _dlq_names(self, actor: ActorRef | str) -> tuple[str, str]:
        queue = actor if isinstance(actor, str) else unique_queues([actor])[0].queue
        return naming.queue_name(self.namespace, queue), naming.dlq_name(self.namespace, queue)

    def _existing(self, channel: Any, queue: str) -> None:
        """Raise `ConfigurationError` unless `queue` exists (checked on its own channel)."""
        try:
            channel.connection.channel().queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise ConfigurationError(
                f"no queue {queue!r} on the broker ({exc.reply_text})"
            ) from exc

    def dead_letters(
        self, actor: ActorRef | str, *, limit: int = 1000, offset: int = 0
    ) -> list[Delivery]:
        found: list[Delivery] = []
        position = 0

        def keep(letter: Delivery) -> bool:
            nonlocal position
            if offset <= position < offset + limit:
                found.append(letter)
            position += 1
            return False

        self._pass(actor, keep)
        return found

    def dead_letter_count(self, actor: ActorRef | str) -> int:
        dlq = self._dlq_names(actor)[1]
        with self.admin() as channel:
            self._existing(channel, dlq)
            count: int = channel.queue_declare(dlq, passive=True).method.message_count
        return count

    def find_dead_letter(self, actor: ActorRef | str, message_id: str) -> Delivery | None:
        found: list[Delivery] = []

        def match(letter: Delivery) -> bool:
            if not found and letter.message_id == message_id:
                found.append(letter)
            return False

        self._pass(actor, match)
        return found[0] if found else None

    def replay_dead_letters(
        self,
        actor: ActorRef | str,
        *,
        message_ids: set[str] | None = None,
        on_replayed: Callable[[str], None] | None = None,
    ) -> int:
        def chosen(letter: Delivery) -> bool:
            return message_ids is None or letter.message_id in message_ids

        def moved(letter: Delivery) -> None:
            if on_replayed is not None:
                on_replayed(letter.message_id)

        return self._pass(actor, chosen, replay=True, on_moved=moved)

    def _pass(
        self,
        actor: ActorRef | str,
        visit: Callable[[Delivery], bool],
        *,
        replay: bool = False,
        on_moved: Callable[[Delivery], None] | None = None,
    ) -> int:
        """One `deadletter_pass.run_pass` over the actor's `.dlq`, holding its lock."""
        queue, dlq = self._dlq_names(actor)
        with self.admin() as channel:
            if replay:
                self._existing(channel, queue)
            self._existing(channel, dlq)
            dlq_lock(channel.connection, dlq)
            return run_pass(channel, dlq, visit, queue=queue if replay else None, on_moved=on_moved)

    def purge_dead_letters(self, actor: ActorRef | str) -> int:
        dlq = self._dlq_names(actor)[1]
        with self.admin() as channel:
            self._existing(channel, dlq)
            purged: int = channel.queue_purge(dlq).method.message_count
        return purged

    def worker(
        self,
        actors: Iterable[ActorRef],
        *,
        threads: int = 8,
        prefetch: int | None = None,
        queues: Iterable[str] | None = None,
        shutdown_timeout_s: float = 30.0,
        hooks: Sequence[MessageHooks] = (),
        max_body_bytes: int | None = None,
    ) -> Worker:
        from services.worker import RabbitWorker

        return RabbitWorker(
            self.url,
            self.namespace,
            select_actors(actors, queues),
            threads=threads,
            prefetch=prefetch,
            shutdown_timeout_s=shutdown_timeout_s,
            hooks=hooks,
            max_body_bytes=max_body_bytes_or_default(max_body_bytes),
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
                connection_parameters(self._url, role="admin"),
                # pika's stubs type this as an instance; pika wants the class.
                _impl_class=TolerantSelectConnection,  # type: ignore[arg-type]
            )
        except pika.exceptions.AMQPError as exc:
            raise BrokerConnectionError(
                f"cannot connect to {redact(self._url)}: {describe(exc)}"
            ) from exc
        return self._connection.channel()

    def __exit__(self, exc_type: object, exc: object, _tb: object) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
            raise TopologyError(describe(exc)) from exc
