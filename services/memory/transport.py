"""`MemoryTransport`: queues in this process's memory, for unit tests and the demo.

Same routing as RabbitMQ (fan-out by topic, send to one queue), same wire format (messages
are encoded to JSON and decoded again, so validation behaves as on RabbitMQ), same retries,
delays and dead letters. Time is a `VirtualClock`: delays and retry backoff pass when the
test says so.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from leveret.actors.actor import Actor
from leveret.schemas import wire
from leveret.schemas.errors import PublishError
from leveret.services.delivery import Delivery, Outcome
from leveret.services.memory._asking import MemoryAsking
from leveret.services.memory._consumer import MemoryConsumer
from leveret.services.memory._dead_letters import MemoryDeadLetters
from leveret.services.memory._schedule import MemoryScheduling
from leveret.services.memory.clock import VirtualClock
from leveret.services.observability.logs import get_logger
from leveret.services.runtime.consumer import ConsumerOptions
from leveret.services.topology import naming
from leveret.services.topology.addresses import Address, Addresses
from leveret.services.transport import (
    Inspection,
    MemoryOptions,
    OutgoingMessage,
    PublishResult,
    QueueFigures,
    Transport,
)

log = get_logger("leveret.memory")


@dataclass(order=True, slots=True)
class _Delayed:
    due_s: float
    sequence: int
    address: Address = field(compare=False)  # where it goes once due
    delivery: Delivery = field(compare=False)


class MemoryInspection(Inspection):
    """The inspection role of a `MemoryTransport`: its queues and the heartbeats its
    workers left in it.

    Args:
        transport: The transport to inspect.
    """

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport

    def recent_heartbeats(self, first_wait_s: float) -> list[bytes]:
        return list(self.transport.heartbeats)

    def queue_figures(self, queues: Sequence[str]) -> dict[str, QueueFigures]:
        transport = self.transport
        with transport.changed:
            return {
                name: QueueFigures(
                    ready=len(transport.queues[name]),
                    consumers=0,
                    unacked=transport.unacked.get(name, 0),
                )
                for name in queues
                if name in transport.queues
            }


class MemoryTransport(Transport):
    """The `Transport` whose queues live in this process.

    Args:
        namespace: Prefix of every queue.
        options: Its options (the clock).

    Attributes:
        clock: The clock delays are measured on.
        changed: Held while queues change; notified after each change.
        queues: Every queue by full name (actor queues and `.dlq`s).
    """

    def __init__(self, namespace: str, options: MemoryOptions | None = None) -> None:
        self.url = "memory://"
        self.namespace = namespace
        self.addresses = Addresses(namespace)
        clock = (options or MemoryOptions()).clock
        self.clock = clock if clock is not None else VirtualClock()
        self.changed = threading.Condition()
        self.queues: dict[str, deque[Delivery]] = {}
        self._actor_queues: dict[str, str] = {}  # full name -> the actor's queue name
        self._bindings: dict[str, set[str]] = {}
        self.unacked: dict[str, int] = {}
        self._delayed: list[_Delayed] = []
        self._sequence = itertools.count()
        self.answer_in_thread: Callable[[], None] | None = None
        """Internal: `MemoryBroker.answer_in_thread`, called after a request is published:
        a handler's ask is answered in the thread that runs it (join, eager mode)."""
        self.eager_join: Callable[[], None] | None = None
        """Internal: `MemoryBroker`'s eager mode, called after each `publish` outside the
        lock. Not an extension point (use middleware): it runs the handlers, and their
        errors reach the publishing call, which a middleware hook's never do."""
        self.scheduler_leader: object | None = None  # the MemorySchedulerBackend leading
        self.scheduler_state: dict[str, datetime] = {}  # the last tick sent, per entry
        self.heartbeats: deque[bytes] = deque(maxlen=1000)  # the workers' latest heartbeats
        self.dead_letters = MemoryDeadLetters(self)
        self.inspection = MemoryInspection(self)
        self.scheduling = MemoryScheduling(self)
        self.asking: MemoryAsking = MemoryAsking(self)

    # Topology ---------------------------------------------------------------------------

    def declare(self, actors: Sequence[type[Actor]], *, timeout_s: float | None = None) -> None:
        with self.changed:
            for actor in actors:
                name = naming.queue_name(self.namespace, actor.queue)
                self._actor_queues[name] = actor.queue
                self.queues.setdefault(name, deque())
                self.queues.setdefault(naming.dlq_name(self.namespace, actor.queue), deque())
                for topic in actor.topics():
                    self._bindings.setdefault(topic, set()).add(name)

    def delete(self, actors: Sequence[type[Actor]]) -> None:
        with self.changed:
            for actor in actors:
                name = naming.queue_name(self.namespace, actor.queue)
                self.queues.pop(name, None)
                self.queues.pop(naming.dlq_name(self.namespace, actor.queue), None)
                for bound in self._bindings.values():
                    bound.discard(name)

    def delete_namespace_exchanges(self) -> None:
        """No exchanges in memory; the scheduler's state is forgotten."""
        with self.changed:
            self.scheduler_state = {}

    # Publishing -------------------------------------------------------------------------

    def unavailable_reason(self, timeout_s: float | None) -> str | None:
        return None  # in this process: always there

    def publish(self, items: Sequence[OutgoingMessage], timeout_s: float | None) -> PublishResult:
        return self._publish(items, raise_errors=True)

    def publish_each(self, items: Sequence[OutgoingMessage]) -> PublishResult:
        return self._publish(items, raise_errors=False)

    def publish_request(self, item: OutgoingMessage, reply_to: str) -> PublishResult:
        """Publish an ask's request, answered to `reply_to` (`MemoryAsking`)."""
        return self._publish([item], raise_errors=True, reply_to=reply_to)

    def _publish(
        self,
        items: Sequence[OutgoingMessage],
        *,
        raise_errors: bool,
        reply_to: str | None = None,
    ) -> PublishResult:
        unroutable: list[int] = []
        errors: dict[int, PublishError] = {}
        with self.changed:
            for index, item in enumerate(items):
                envelope = item.envelope
                address = self.addresses.publish(queue=item.route.queue, topic=envelope.topic)
                if item.route.queue is not None and address.routing_key not in self.queues:
                    error = PublishError(
                        f"no queue {address.routing_key!r} to deliver message "
                        f"{envelope.message_id} to; declare the actor first",
                        message_id=envelope.message_id,
                    )
                    if raise_errors:
                        raise error
                    errors[index] = error
                    continue
                delivery = Delivery(
                    body=item.body,
                    topic=envelope.topic,
                    message_id=envelope.message_id,
                    correlation_id=envelope.correlation_id,
                    timestamp=int(envelope.timestamp.timestamp()),
                    headers={**envelope.headers, wire.ATTEMPT: envelope.attempt},
                    reply_to=reply_to,
                )
                if item.delay_s > 0:
                    self._schedule(item.delay_s, address, delivery)
                elif not self.route(address, delivery):
                    unroutable.append(index)
            self.changed.notify_all()
        middleware = self.middleware
        if middleware is not None:
            for index in range(len(items)):
                if index not in errors:
                    middleware.publish_confirmed(True, index in unroutable, None)
        if self.eager_join is not None:
            self.eager_join()
        return PublishResult(unroutable, errors)

    def route(self, address: Address, delivery: Delivery) -> bool:
        """Append `delivery` to the queue `address` names (the default exchange), or to
        every queue bound to its topic (the events exchange); False if none took it.
        Call it with the lock held."""
        if not address.exchange:
            targets = [address.routing_key] if address.routing_key in self.queues else []
        else:
            targets = sorted(self._bindings.get(address.routing_key, ()))
        for target in targets:
            self.queues[target].append(
                dataclasses.replace(
                    delivery, exchange=address.exchange, routing_key=address.routing_key
                )
            )
        return bool(targets)

    def _schedule(self, delay_s: float, address: Address, delivery: Delivery) -> None:
        """Hold `delivery` for `delay_s` seconds of the clock, then route it to `address`
        (in memory, a delay is a wait here, not a trip through the delay levels)."""
        due_s = self.clock.now() + delay_s
        heapq.heappush(self._delayed, _Delayed(due_s, next(self._sequence), address, delivery))

    def release_due(self) -> None:
        """Move delayed messages whose time has come to their queues (lock held)."""
        now = self.clock.now()
        self.asking.expire(now)
        while self._delayed and self._delayed[0].due_s <= now:
            due = heapq.heappop(self._delayed)
            if not self.route(due.address, due.delivery):
                log.warning(
                    "delayed_message_unroutable",
                    message_id=due.delivery.message_id,
                    topic=due.delivery.topic,
                )

    def advance_clock(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass: delayed messages due by then are delivered."""
        with self.changed:
            self.clock.advance(seconds)
            self.release_due()
            self.changed.notify_all()

    def next_due_s(self) -> float | None:
        """When the next delayed message is due (lock held), if any."""
        return self._delayed[0].due_s if self._delayed else None

    def delayed(self) -> int:
        """Messages waiting for their delay (or retry backoff) to pass."""
        with self.changed:
            return len(self._delayed)

    # Consuming --------------------------------------------------------------------------

    def take(self, names: Sequence[str]) -> tuple[str, Delivery] | None:
        """The next delivery of the first of `names` that has one (lock held), if any."""
        self.release_due()
        for name in names:
            waiting = self.queues.get(name)
            if waiting:
                self.unacked[name] = self.unacked.get(name, 0) + 1
                return name, waiting.popleft()
        return None

    def settle(self, name: str, delivery: Delivery, outcome: Outcome) -> None:
        """Act on a handled delivery of queue `name`: retry or dead-letter it, or drop it."""
        with self.changed:
            self.unacked[name] -= 1
            actor_queue = self._actor_queues[name]
            if outcome.fate == "retry":
                again = dataclasses.replace(delivery, headers=outcome.headers, redelivered=False)
                address = self.addresses.retry(actor_queue)
                if outcome.delay_s > 0:
                    self._schedule(outcome.delay_s, address, again)
                else:
                    self.route(address, again)
            elif outcome.fate == "dead_letter":
                address = self.addresses.dead_letter(actor_queue)
                self.queues.setdefault(address.routing_key, deque()).append(
                    dataclasses.replace(
                        delivery,
                        headers=outcome.headers,
                        exchange=address.exchange,
                        routing_key=address.routing_key,
                        reply_to=None,  # a replay answers no caller
                    )
                )
            self.changed.notify_all()
        if outcome.reply is not None:
            self.asking.deliver(outcome.reply)

    def give_back(self, name: str, delivery: Delivery) -> None:
        """Put a delivery back at the head of queue `name`, marked redelivered."""
        with self.changed:
            self.unacked[name] -= 1
            waiting = self.queues.get(name)
            if waiting is not None:
                waiting.appendleft(dataclasses.replace(delivery, redelivered=True))
            self.changed.notify_all()

    def consumer(self, actors: Sequence[type[Actor]], options: ConsumerOptions) -> MemoryConsumer:
        self.declare(actors)
        names = [naming.queue_name(self.namespace, actor.queue) for actor in actors]
        return MemoryConsumer(self, names, prefetch=options.prefetch)

    def close(self) -> None:
        """Nothing to close but the asks still waiting, which fail (`AskInterrupted`)."""
        self.asking.close()
