"""What a `Broker` needs from the messaging system under it: a `Transport`.

A `Broker` holds one transport, chosen by the URL's scheme
(`leveret.services.broker.transport_for`): RabbitMQ
(`leveret.services.rabbitmq.RabbitTransport`) or the in-memory broker
(`leveret.services.memory.MemoryTransport`). The broker does everything that is the same for both
(building messages, routes, delays, which actors are declared); the transport moves bytes.
Options that only make sense for one transport are typed per transport (`RabbitOptions`,
`MemoryOptions`).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias

from leveret.schemas.envelope import Envelope
from leveret.schemas.errors import ConfigurationError, PublishError
from leveret.services.config import DEFAULT_CONNECT_TIMEOUT_S, positive_seconds
from leveret.services.middleware import MiddlewareChain
from leveret.services.topology.delays import DelayQueues

if TYPE_CHECKING:
    from leveret.actors.actor import Actor
    from leveret.services.asking import Asking
    from leveret.services.delivery import Delivery
    from leveret.services.memory.clock import VirtualClock
    from leveret.services.runtime.consumer import Consumer, ConsumerOptions
    from leveret.services.scheduling import SchedulerBackend


@dataclass(frozen=True, slots=True)
class Route:
    """Where one message goes: fan-out by `topic`, or to the actor `queue` only."""

    topic: str
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message ready for the wire: envelope, JSON body, route, and delay in seconds."""

    envelope: Envelope
    body: bytes
    route: Route
    delay_s: int = 0


@dataclass(slots=True)
class PublishResult:
    """What became of messages handed to a transport.

    Attributes:
        unroutable: Indices of fan-out publishes that no queue received.
        errors: Why each message that was not confirmed was not (only when the caller asked
            for every message's fate instead of an exception).
    """

    unroutable: list[int]
    errors: dict[int, PublishError]


@dataclass(frozen=True, slots=True)
class RabbitOptions:
    """Options of the RabbitMQ transport.

    Attributes:
        confirm_timeout_s: How long a publish waits for the broker's confirm.
        connect_timeout_s: How long one connection attempt to a node may take, and how long
            a publish waits for a broker that cannot be reached before it fails with
            `BrokerUnavailable` (nothing sent); while the broker is known to be unreachable
            a publish fails within about a second (see docs/failure-handling.md).
        delay_queues: The queue type of the delay levels: ``classic`` (one node's, the
            cheapest) or ``quorum`` (replicated, at-least-once between levels; see
            docs/failure-handling.md). By default ``$LEVERET_DELAY_QUEUES``, else ``quorum``
            when the broker URL names several nodes (a cluster) and ``classic`` for one.

    Raises:
        ConfigurationError: A timeout that is not a positive, finite number of seconds.
    """

    confirm_timeout_s: float = 30.0
    delay_queues: DelayQueues | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("confirm_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not positive_seconds(value):
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, not {value!r}"
                )


@dataclass(frozen=True, slots=True)
class MemoryOptions:
    """Options of the in-memory transport.

    Attributes:
        clock: The clock delays are measured on; a new `VirtualClock` by default.
    """

    clock: VirtualClock | None = None


TransportOptions: TypeAlias = RabbitOptions | MemoryOptions


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """What the broker says of one queue now (`leveret status`).

    Attributes:
        ready: Messages waiting.
        consumers: Consumers attached.
        unacked: Messages delivered and not acknowledged yet (None: not known over AMQP).
        incoming_per_s: Messages published to it per second (None: not known).
        delivered_per_s: Messages delivered from it per second (None: not known).
        dead_letters_at_most_once: True for a quorum queue with a dead-letter exchange
            whose arguments and policy leave it at RabbitMQ's at-most-once dead-lettering
            (None: not known over AMQP, or not such a queue).
    """

    ready: int
    consumers: int
    unacked: int | None = None
    incoming_per_s: float | None = None
    delivered_per_s: float | None = None
    dead_letters_at_most_once: bool | None = None


DeadLetterFilter: TypeAlias = "Callable[[Delivery], bool]"
"""Says of a dead letter whether it is picked (to list, or to replay)."""
OnReplay: TypeAlias = "Callable[[Delivery], None]"
"""Called with each dead letter once it is back on its queue."""


def with_ids(message_ids: Collection[str] | None) -> DeadLetterFilter:
    """Picks the dead letters with these message ids (every one when None)."""
    if message_ids is None:
        return lambda _letter: True
    return lambda letter: letter.message_id in message_ids


def reporting_ids(on_replayed: Callable[[str], None] | None) -> OnReplay:
    """Calls `on_replayed` with the message id of each dead letter replayed (if given)."""
    if on_replayed is None:
        return lambda _letter: None
    return lambda letter: on_replayed(letter.message_id)


class DeadLetters(ABC):
    """A transport's dead-letter queues: read, count, replay and purge them.

    Queue names are actors' queue names without the namespace; each operation on one
    queue's dead letters runs alone (on RabbitMQ they take turns under a lock).
    """

    @abstractmethod
    def page(
        self, queue: str, *, limit: int, offset: int, where: DeadLetterFilter | None = None
    ) -> list[Delivery]:
        """A page of the dead letters of `queue` (of those `where` picks), oldest first;
        nothing is changed."""

    @abstractmethod
    def find(self, queue: str, message_id: str) -> Delivery | None:
        """The dead letter of `queue` with this id, if any; nothing is changed."""

    @abstractmethod
    def count(self, queue: str) -> int:
        """How many dead letters `queue` has."""

    @abstractmethod
    def replay(self, queue: str, chosen: DeadLetterFilter, on_replay: OnReplay) -> int:
        """Put the dead letters `chosen` picks back on `queue`, attempt count reset.

        Only the letters present when the replay starts are visited, each once.

        Returns:
            How many were replayed (each reported to `on_replay` once it is back).
        """

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every dead letter of `queue`; returns how many there were."""


class Inspection(ABC):
    """What a transport can say of the workers and queues it serves (`leveret status`)."""

    @abstractmethod
    def recent_heartbeats(self, first_wait_s: float) -> list[bytes]:
        """The worker heartbeats of about the last minute, as published (untrusted bytes).

        On RabbitMQ a queue bound to the heartbeats exchange keeps them while anyone asks
        (it expires 10 minutes after the last look); the first look creates it and waits
        `first_wait_s` for heartbeats to arrive.
        """

    @abstractmethod
    def queue_figures(self, queues: Sequence[str]) -> dict[str, QueueFigures]:
        """Figures of the queues (full names) that exist; missing ones are left out."""


class Scheduling(ABC):
    """Where a transport keeps the schedulers' lock and state (`leveret.services.scheduling`)."""

    @abstractmethod
    def backend(self) -> SchedulerBackend:
        """A new scheduler's lock, state and publishing."""

    @abstractmethod
    def stored_state(self) -> dict[str, datetime]:
        """The last tick sent of each schedule entry, as stored (nothing is changed)."""


class Transport(ABC):
    """Moves messages for a `Broker`: topology, publishing, consuming.

    The rest is reached through role objects, set by each transport: `dead_letters`,
    `inspection`, `scheduling`. A test double implements the abstract methods here and
    only the roles its test uses (a role left unset fails when it is first used).

    Queue names given to a transport are actors' queue names without the namespace.

    Attributes:
        url: The broker URL (with credentials; never log it unredacted).
        namespace: Prefix of every exchange and queue.
        dead_letters: The actors' dead-letter queues.
        inspection: Heartbeats and queue figures, for `leveret status` and the dashboard.
        scheduling: The schedulers' lock and state.
        asking: Requests whose answers come back to this process (`Broker.ask`).
    """

    url: str
    namespace: str
    asking: Asking
    dead_letters: DeadLetters
    inspection: Inspection
    scheduling: Scheduling

    middleware: MiddlewareChain | None = None
    """The broker's middleware, whose ``publish_confirmed`` sees the broker's answer to each
    message (None while none of them has that hook: nothing is timed then)."""

    chain: MiddlewareChain = MiddlewareChain()
    """The broker's whole chain (its asking role tells ``reply_dropped`` to it)."""

    def use_middleware(self, middleware: MiddlewareChain) -> None:
        """Have `middleware`'s ``publish_confirmed`` see the broker's answer to each message
        this transport publishes: on the thread running its I/O loop (RabbitMQ), or the
        publishing one (in memory). `Broker` passes its own chain."""
        self.middleware = middleware if middleware.handles("publish_confirmed") else None
        self.chain = middleware

    @abstractmethod
    def declare(self, actors: Sequence[type[Actor]], *, timeout_s: float | None = None) -> None:
        """Declare the exchanges, queues and bindings of `actors` (idempotent).

        Args:
            actors: The actors.
            timeout_s: How long to wait for the broker, if not the transport's own bound.

        Raises:
            TopologyError: The broker refused a declaration, or did not answer in time.
            BrokerConnectionError: The broker cannot be reached.
        """

    @abstractmethod
    def publish(self, items: Sequence[OutgoingMessage], timeout_s: float | None) -> PublishResult:
        """Hand `items` to the broker and wait for its confirms.

        Args:
            items: The messages.
            timeout_s: How long to wait for the confirms (None: the transport's default).

        Raises:
            PublishError: A message was not confirmed, or a `send` found no queue (the
                messages before it may be stored).
        """

    @abstractmethod
    def publish_each(self, items: Sequence[OutgoingMessage]) -> PublishResult:
        """`publish`, each message on its own: one refused fails no other, and each one's
        error is in the result (`PublishResult.errors`) instead of raised."""

    async def publish_async(
        self, items: Sequence[OutgoingMessage], *, timeout_s: float | None = None
    ) -> PublishResult:
        """`publish` (raising errors) for asyncio code: awaits the confirms.

        By default `publish` runs in a thread of the loop's default executor (the in-memory
        broker's, which in eager mode handles the message at once); RabbitMQ's awaits the
        publisher's confirms without a thread.
        """
        return await asyncio.to_thread(self.publish, items, timeout_s)

    @abstractmethod
    def unavailable_reason(self, timeout_s: float | None) -> str | None:
        """Why the broker cannot take messages now, or None when it can.

        Connects first if need be, waiting at most `timeout_s` (None: the confirm timeout).
        """

    @abstractmethod
    def delete(self, actors: Sequence[type[Actor]]) -> None:
        """Delete the actors' queues and dead-letter queues, with their messages."""

    @abstractmethod
    def delete_namespace_exchanges(self) -> None:
        """Delete the namespace's own exchanges, delay levels and scheduler state (tests,
        teardown)."""

    @abstractmethod
    def consumer(self, actors: Sequence[type[Actor]], options: ConsumerOptions) -> Consumer:
        """A consumer of the actors' queues for a worker runtime (not started), consuming
        as `options` say (prefetch, handler capacity, adaptive prefetch)."""

    @abstractmethod
    def close(self) -> None:
        """Close connections; publishing afterwards reconnects."""
