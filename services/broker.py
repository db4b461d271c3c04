"""`Broker`: the one interface to RabbitMQ and to the in-memory broker.

```python
broker = Broker("amqp://guest:guest@localhost:5672/", namespace="shop")  # or "memory://"
broker.declare(Billing, send_welcome)
broker.publish(OrderPlaced(order_id=1, total=Decimal("9.90")))
broker.send(Billing, OrderPlaced(...))
configure(broker)      # the process's broker for Actor.send and publish()
```

The URL's scheme picks the transport under the broker (`transport_for`): RabbitMQ
(``amqp://``, ``amqps://``) or the in-memory broker (``memory://``); see
`leveret.services.transport`. Everything here works the same on both. `RabbitBroker` (here)
and `MemoryBroker` (`leveret.services.testing`) are brokers whose transport is fixed, with
what only that transport offers (typed options, admin helpers, test helpers).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Unpack

from leveret.actors.actor import Actor, ActorRef
from leveret.actors.dispatch import PublishArgs
from leveret.actors.function import as_actor_class
from leveret.actors.registry import unique_queues
from leveret.actors.schedules import Schedule
from leveret.schemas.errors import (
    BrokerConnectionError,
    BrokerUnavailable,
    ConfigurationError,
    PublishError,
)
from leveret.schemas.message import Message
from leveret.services import config
from leveret.services.broker_asks import BrokerAsks
from leveret.services.broker_dead_letters import BrokerDeadLetters
from leveret.services.config import DEFAULT_CONNECT_TIMEOUT_S
from leveret.services.memory.transport import MemoryTransport
from leveret.services.middleware import Middleware
from leveret.services.observability.defaults import standard_chain
from leveret.services.observability.logs import get_logger
from leveret.services.observability.redaction import redact
from leveret.services.publishing import Outbound, check_timeout, message_ids, publish_options
from leveret.services.rabbitmq._admin import AdminChannel
from leveret.services.rabbitmq._publisher import Publisher
from leveret.services.rabbitmq.transport import RabbitTransport
from leveret.services.runtime.consumer import ConsumerOptions
from leveret.services.runtime.options import WorkerArgs, worker_options
from leveret.services.runtime.worker import Worker
from leveret.services.scheduling import DEFAULT_GRACE_S, DEFAULT_POLL_S, Scheduler
from leveret.services.topology import naming
from leveret.services.topology.delays import DelayQueues
from leveret.services.transport import (
    MemoryOptions,
    OutgoingMessage,
    PublishResult,
    RabbitOptions,
    Route,
    Transport,
    TransportOptions,
)

log = get_logger("leveret.broker")

DEFAULT_DECLARE_TIMEOUT_S = 30.0
"""How long a declaration waits for the broker when the caller gives no timeout."""

__all__ = ["Broker", "OutgoingMessage", "PublishResult", "RabbitBroker", "Route", "transport_for"]


class Broker(BrokerAsks, BrokerDeadLetters):
    """Connection to a message broker, with the topology of the actors it knows.

    The URL's scheme picks the transport under it (`transport_for`): RabbitMQ for
    ``amqp://``/``amqps://``, the in-memory broker for ``memory://``. Every method works
    the same on both.

    Args:
        url: ``amqp://user:password@host:port/vhost``, ``amqps://…`` or ``memory://``;
            for a RabbitMQ cluster, its nodes' URLs (a list, or one string with commas
            between them), tried in turn. Defaults to ``$LEVERET_BROKER_URL`` (commas
            between several), then ``amqp://guest:guest@localhost:5672/``.
        namespace: Prefix of every exchange and queue; defaults to ``$LEVERET_NAMESPACE``,
            then ``leveret``.
        auto_declare: Declare an actor's topology the first time a message is sent to it,
            so that nothing sent before the first worker starts is dropped.
        options: Options of the transport the URL names (`RabbitOptions`, `MemoryOptions`).
        transport: A transport built by the caller, instead of one from `url`.
        middleware: `Middleware` instances run around publishing, handling, settling and
            the worker's start and stop, in this order (after Leveret's own tracing).

    Raises:
        ConfigurationError: An unknown URL scheme, an invalid namespace, or options of
            another transport.
        InvalidArgument: An item of `middleware` is not a `Middleware` instance.
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        namespace: str | None = None,
        auto_declare: bool = True,
        options: TransportOptions | None = None,
        transport: Transport | None = None,
        middleware: Iterable[Middleware] = (),
    ) -> None:
        self.middleware = standard_chain(middleware)
        """Run around publishing and handling: tracing first, then the `middleware` given."""
        if transport is None:
            checked = naming.check_namespace(config.namespace(namespace))
            transport = transport_for(config.broker_url(url), checked, options)
        transport.use_middleware(self.middleware)
        self.transport = transport
        self.auto_declare = auto_declare
        self._declared: set[type[Actor]] = set()
        self._declare_locks: dict[type[Actor], threading.Lock] = {}
        self._declare_locks_lock = threading.Lock()
        self._outbound = Outbound(transport, self.middleware)

    @property
    def url(self) -> str:
        """The broker URL (with its password: never log it unredacted); several URLs with
        commas between them."""
        return self.transport.url

    @property
    def namespace(self) -> str:
        """Prefix of every exchange and queue."""
        return self.transport.namespace

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact(self.url)} namespace={self.namespace!r}>"

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Topology ---------------------------------------------------------------------------

    def declare(self, *actors: ActorRef, timeout: float | None = None) -> None:
        """Declare the exchanges, queues and bindings of these actors (idempotent).

        Args:
            actors: The actors.
            timeout: Seconds to wait for the broker (30 s by default).

        Raises:
            DefinitionError: Two of the actors share a queue.
            ConfigurationError: A queue's names in this namespace are too long for AMQP.
            TopologyError: The broker refused a declaration (e.g. a queue exists with other
                arguments), or did not answer in time.
            BrokerConnectionError: The broker cannot be reached (within its connect timeout).
            InvalidArgument: An invalid timeout.
        """
        timeout_s = check_timeout(timeout)
        classes = _named(self.namespace, unique_queues(actors))
        self.transport.declare(classes, timeout_s=timeout_s)
        self._declared.update(classes)

    def declare_on_first_use(self, actor: ActorRef, *, timeout: float | None = None) -> None:
        """Declare `actor` unless this broker did already (with `auto_declare` only).

        Args:
            actor: The actor.
            timeout: As for `declare` (the caller's publish timeout, for a `send`).

        Raises:
            TopologyError: The broker refused a declaration.
            BrokerUnavailable: The broker cannot be reached (for the `send` that declares).
        """
        cls = as_actor_class(actor)
        if not self.auto_declare or cls in self._declared:
            return
        # Many callers' first sends (a hundred threads asking at once) declare it once:
        # the others wait for that declaration rather than each making its own.
        with self._declare_locks_lock:
            lock = self._declare_locks.setdefault(cls, threading.Lock())
        wait_s = timeout if timeout is not None else DEFAULT_DECLARE_TIMEOUT_S
        begun = time.monotonic()
        if not lock.acquire(timeout=wait_s):
            raise BrokerUnavailable(
                f"declaring the queue of actor {cls.__qualname__} (another caller's first "
                f"send) did not finish within {wait_s}s; nothing was sent"
            )
        try:
            if cls not in self._declared:  # in what is left of the caller's timeout
                left_s = max(wait_s - (time.monotonic() - begun), 0.001)
                self.declare(actor, timeout=left_s)
        except BrokerConnectionError as exc:
            raise BrokerUnavailable(f"{exc}; nothing was sent") from exc
        finally:
            lock.release()

    def delete(self, *actors: ActorRef) -> None:
        """Delete the actors' queues and dead-letter queues, with the messages in them."""
        classes = _named(self.namespace, unique_queues(actors))
        self.transport.delete(classes)
        self._declared.difference_update(classes)

    def delete_namespace_exchanges(self) -> None:
        """Delete the namespace's own exchanges and delay levels; for tests and teardown.

        Messages waiting in the delay levels are deleted with them.
        """
        self.transport.delete_namespace_exchanges()

    # Publishing: every call checks its options once (`publish_options`) and is a thin
    # layer over `Outbound` (leveret.services.publishing): one prepare step between the
    # middleware's publish hooks, and one transport call.

    def publish(self, message: Message, **options: Unpack[PublishArgs]) -> str:
        """Publish to every actor bound to the message's topic; wait for the confirm.

        A message no queue takes (no actor handles the topic yet) is logged, not an error:
        events may have no subscribers.

        Args:
            message: The message.
            **options: `PublishArgs`: delay or eta, correlation id, confirm timeout.

        Returns:
            The message id.

        Raises:
            PublishError: The broker did not confirm the message.
            PublishTimeout: No confirm within the timeout (the message may be stored).
            InvalidArgument: An invalid option (see `PublishArgs`).
        """
        return self._outbound.publish([message], None, publish_options(**options))[0]

    def publish_many(
        self, messages: Iterable[Message], **options: Unpack[PublishArgs]
    ) -> list[str]:
        """Publish several messages by topic, pipelining confirms; wait for all of them.

        Args:
            messages: The messages, published in this order.
            **options: As for `publish`, for every message (the timeout for the batch).

        Returns:
            The message ids, in order.

        Raises:
            PublishError: A message was not confirmed; the others may have been.
            InvalidArgument: An invalid option (see `PublishArgs`).
        """
        return self._outbound.publish(list(messages), None, publish_options(**options))

    def send(self, actor: ActorRef, message: Message, **options: Unpack[PublishArgs]) -> str:
        """Deliver to one actor's queue only; wait for the confirm.

        Args:
            actor: The actor (class or `@actor` function).
            message: A message one of its handlers takes.
            **options: As for `publish`.

        Returns:
            The message id.

        Raises:
            NotHandled: The actor has no handler for the message's type.
            PublishError: Not confirmed, or the actor's queue does not exist. (A delayed
                message meets its queue only when the delay is over; should the queue be
                deleted by then, RabbitMQ drops it.)
            InvalidArgument: An invalid option (see `PublishArgs`).
        """
        cls = self._outbound.recipient(actor, message)
        checked = publish_options(**options)
        self.declare_on_first_use(cls, timeout=checked.timeout_s)
        return self._outbound.publish([message], cls, checked)[0]

    async def publish_async(self, message: Message, **options: Unpack[PublishArgs]) -> str:
        """`publish` for asyncio code: awaits the confirm without blocking the event loop.

        Arguments, result and errors are `publish`'s.
        """
        return (await self._outbound.publish_async([message], None, publish_options(**options)))[0]

    async def send_async(
        self, actor: ActorRef, message: Message, **options: Unpack[PublishArgs]
    ) -> str:
        """`send` for asyncio code: awaits the confirm without blocking the event loop.

        Arguments, result and errors are `send`'s. The first send to an actor declares
        its queue (with `auto_declare`) in a thread.
        """
        cls = self._outbound.recipient(actor, message)
        checked = publish_options(**options)
        if self.auto_declare and cls not in self._declared:
            await asyncio.to_thread(self.declare_on_first_use, cls, timeout=checked.timeout_s)
        return (await self._outbound.publish_async([message], cls, checked))[0]

    def prepare(
        self, message: Message, *, actor: ActorRef | None = None, **options: Unpack[PublishArgs]
    ) -> OutgoingMessage:
        """Build a message now, to publish it later with `publish_prepared` (or store it).

        Its message id is fixed here: publishing it later (or again) keeps that id. Used by
        the Django integration (on-commit publishing and the transactional outbox).

        Args:
            message: The message.
            actor: Deliver to this actor's queue only (as `send`); fan out by topic if None.
            **options: As for `publish`; a delay counts from now. The timeout is only
                checked: the later publish is given its own.

        Raises:
            NotHandled: `actor` has no handler for the message's type.
            InvalidArgument: An invalid option (see `PublishArgs`).
        """
        cls = None if actor is None else self._outbound.recipient(actor, message)
        return self._outbound.prepare(message, cls, publish_options(**options))

    def publish_prepared(
        self, items: Sequence[OutgoingMessage], *, timeout: float | None = None
    ) -> list[str]:
        """Publish messages built by `prepare` (or stored and rebuilt), pipelining confirms.

        Each keeps its message id, correlation id, timestamp, headers and route. A fan-out
        no queue takes is logged; a queue route whose queue does not exist is an error.

        Args:
            items: The prepared messages.
            timeout: As for `publish`.

        Returns:
            The message ids, in order.

        Raises:
            PublishError: A message was not confirmed; the others may have been.
            InvalidArgument: An invalid timeout.
        """
        self._outbound.publish_prepared(items, check_timeout(timeout))
        return message_ids(items)

    def publish_prepared_each(self, items: Sequence[OutgoingMessage]) -> list[PublishError | None]:
        """Publish messages built by `prepare`, each on its own: one failing fails no other.

        For callers that must know every message's fate, such as the outbox relay: a batch
        in which one message is refused still has every other one stored.

        Returns:
            For each message, in order: None when the broker confirmed it, else the
            `PublishError` it met (a `PublishTimeout` when no confirm came in time: that
            message may still be stored).
        """
        result = self._outbound.publish_prepared(items, None, each=True)
        return [result.errors.get(index) for index in range(len(items))]

    def check_available(self, timeout: float | None = None) -> None:
        """Make sure the broker can take messages now; for callers that must fail fast.

        Connects first if need be. A fail-fast caller (a web request about to commit) calls
        it before the work whose message must not be lost, and can still roll back.

        Args:
            timeout: Seconds to wait for a connection; the confirm timeout if None. While
                the connection is known to be lost it answers at once.

        Raises:
            BrokerUnavailable: The broker is unreachable, blocks publishing (a memory or
                disk alarm) or refuses the namespace's declarations.
            InvalidArgument: An invalid timeout.
        """
        reason = self.transport.unavailable_reason(check_timeout(timeout))
        if reason is not None:
            raise BrokerUnavailable(reason)

    # Running ----------------------------------------------------------------------------

    def worker(self, actors: Iterable[ActorRef], **options: Unpack[WorkerArgs]) -> Worker:
        """A worker consuming the actors' queues (not started).

        Args:
            actors: The actors to run.
            **options: `WorkerArgs`: threads, async concurrency, prefetch, queues,
                shutdown timeout, largest body.

        Raises:
            ConfigurationError: An option out of range, or no actor to run.
        """
        checked = worker_options(actors, namespace=self.namespace, **options)
        return Worker(
            self.transport.consumer(
                checked.actors,
                ConsumerOptions(checked.prefetch, checked.capacity, checked.adaptive),
            ),
            checked.actors,
            namespace=self.namespace,
            threads=checked.threads,
            concurrency=checked.concurrency,
            prefetch=checked.prefetch,
            shutdown_timeout_s=checked.shutdown_timeout_s,
            max_body_bytes=checked.max_body_bytes,
            middleware=self.middleware,
        )

    def scheduler(
        self,
        schedules: Sequence[Schedule] | Callable[[], Sequence[Schedule]],
        *,
        grace_s: float = DEFAULT_GRACE_S,
        poll_s: float = DEFAULT_POLL_S,
        reload_s: float = 5.0,
    ) -> Scheduler:
        """A scheduler for these entries (not started: `Scheduler.run` in a thread).

        Any number may run in a namespace; one leads at a time (see
        `leveret.services.scheduling`). On RabbitMQ each has a connection of its own.

        Args:
            schedules: The entries, or a callable returning them (asked again every
                `reload_s` while leading).
            grace_s: As for `Scheduler`, which says what each does.
            poll_s: As for `Scheduler`.
            reload_s: As for `Scheduler`.

        Raises:
            InvalidArgument: `grace_s` below 1 or `poll_s` not positive.
        """
        return Scheduler(
            schedules,
            self.transport.scheduling.backend(),
            namespace=self.namespace,
            grace_s=grace_s,
            poll_s=poll_s,
            reload_s=reload_s,
        )

    def schedule_state(self) -> dict[str, datetime]:
        """The last tick sent of each schedule entry, as stored in the broker (read only)."""
        return self.transport.scheduling.stored_state()

    def close(self) -> None:
        """Close connections. Publishing afterwards reconnects."""
        self.transport.close()


def transport_for(url: str, namespace: str, options: TransportOptions | None = None) -> Transport:
    """The transport a broker URL names: RabbitMQ for ``amqp``/``amqps``, else memory.

    Raises:
        ConfigurationError: An unknown scheme, or options of another transport.
    """
    kind = config.scheme(url)
    if kind == "memory":
        if isinstance(options, RabbitOptions):
            raise ConfigurationError("RabbitOptions given for a memory:// broker")
        return MemoryTransport(namespace, options)
    if isinstance(options, MemoryOptions):
        raise ConfigurationError(f"MemoryOptions given for an {kind}:// broker")
    return RabbitTransport(url, namespace, options)


class RabbitBroker(Broker):
    """A `Broker` on RabbitMQ; see `Broker` for the arguments.

    Extra Args:
        confirm_timeout_s: How long a publish waits for the broker's confirm.
        connect_timeout_s: How long a connection attempt may take, and a publish waits for a
            broker that cannot be reached (see `RabbitOptions`).
        delay_queues: ``classic`` or ``quorum`` delay levels (see `RabbitOptions`).
    """

    transport: RabbitTransport

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        namespace: str | None = None,
        auto_declare: bool = True,
        confirm_timeout_s: float = 30.0,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        delay_queues: DelayQueues | None = None,
        middleware: Iterable[Middleware] = (),
    ) -> None:
        super().__init__(
            url,
            middleware=middleware,
            namespace=namespace,
            auto_declare=auto_declare,
            options=RabbitOptions(
                confirm_timeout_s=confirm_timeout_s,
                connect_timeout_s=connect_timeout_s,
                delay_queues=delay_queues,
            ),
        )
        if not isinstance(self.transport, RabbitTransport):
            raise ConfigurationError("RabbitBroker needs an amqp:// or amqps:// URL")

    @property
    def publisher(self) -> Publisher:
        """The process's publishing connection of this broker."""
        return self.transport.publisher

    def admin(self) -> AdminChannel:
        """A short-lived blocking channel for administrative work (deleting, counting)."""
        return self.transport.admin()

    def message_count(self, queue: str) -> int:
        """Messages ready in a queue (full name), as the broker counts them.

        Raises:
            NotFound: No such queue.
        """
        return self.transport.message_count(queue)


def _named(namespace: str, classes: list[type[Actor]]) -> list[type[Actor]]:
    """`classes`, once the names of their queues in `namespace` are known to fit AMQP's
    short strings (`naming.check_queue`): nothing too long is ever declared."""
    for cls in classes:
        naming.check_queue(namespace, cls.queue)
    return classes
