"""`MemoryBroker`: the `Broker` in this process's memory, for unit tests and the demo.

Same routing (fan-out by topic, send to one queue), same wire format (messages are encoded
to JSON and decoded again, so validation behaves as on RabbitMQ), same retries, delays and
dead letters. Time is a `VirtualClock`: delays and retry backoff pass when the test says so
(`advance_clock`), or at once in `join`, so a unit test never sleeps.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from actors.actor import Actor, ActorRef
from actors.registry import unique_queues
from schemas import envelope as wire
from schemas.errors import ConfigurationError, PublishError
from services import naming
from services.broker import (
    Broker,
    Delivered,
    Prepared,
    Worker,
    default_prefetch,
    max_body_bytes_or_default,
    run_until_stopped,
    select_actors,
)
from services.deadletters import replayed
from services.execution import Delivery, Executor, MessageHooks, Outcome, Stats
from services.logs import get_logger

log = get_logger("leveret.memory")


class VirtualClock:
    """Time that moves only when told to: `now()` in seconds since the epoch."""

    def __init__(self, start_s: float | None = None) -> None:
        self._now = time.time() if start_s is None else start_s

    def now(self) -> float:
        """The current virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward (never back)."""
        self._now += max(0.0, seconds)


@dataclass(order=True, slots=True)
class _Delayed:
    due_s: float
    sequence: int
    queue: str | None = field(compare=False)  # full queue name, or None: by topic
    topic: str = field(compare=False)
    delivery: Delivery = field(compare=False)


class MemoryBroker(Broker):
    """`Broker` whose queues live in this process; see `Broker` for the arguments.

    Extra Args:
        clock: The clock delays are measured on; a new `VirtualClock` by default.
    """

    def __init__(
        self,
        url: str | None = "memory://",
        *,
        namespace: str | None = None,
        auto_declare: bool = True,
        clock: VirtualClock | None = None,
    ) -> None:
        super().__init__(url or "memory://", namespace=namespace, auto_declare=auto_declare)
        self.clock = clock if clock is not None else VirtualClock()
        self.changed = threading.Condition()
        self.queues: dict[str, deque[Delivery]] = {}
        self._bindings: dict[str, set[str]] = {}
        self._unacked: dict[str, int] = {}
        self._delayed: list[_Delayed] = []
        self._sequence = itertools.count()

    # Topology ---------------------------------------------------------------------------

    def _declare(self, actors: list[type[Actor]]) -> None:
        with self.changed:
            for actor in actors:
                name = naming.queue_name(self.namespace, actor.queue)
                self.queues.setdefault(name, deque())
                self.queues.setdefault(naming.dlq_name(self.namespace, actor.queue), deque())
                for topic in actor.topics():
                    self._bindings.setdefault(topic, set()).add(name)

    def delete(self, *actors: ActorRef) -> None:
        with self.changed:
            for actor in unique_queues(actors):
                name = naming.queue_name(self.namespace, actor.queue)
                self.queues.pop(name, None)
                self.queues.pop(naming.dlq_name(self.namespace, actor.queue), None)
                for bound in self._bindings.values():
                    bound.discard(name)
                self._declared.discard(actor)

    # Publishing -------------------------------------------------------------------------

    def _deliver(self, items: Sequence[Prepared], *, raise_errors: bool = True) -> Delivered:
        unroutable: list[int] = []
        errors: dict[int, PublishError] = {}
        with self.changed:
            for index, item in enumerate(items):
                envelope = item.envelope
                queue = None
                if item.route.queue is not None:
                    queue = naming.queue_name(self.namespace, item.route.queue)
                    if queue not in self.queues:
                        error = PublishError(
                            f"no queue {queue!r} to deliver message "
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
                    headers={wire.ATTEMPT: envelope.attempt},
                )
                if item.delay_s > 0:
                    self._schedule(item.delay_s, queue, envelope.topic, delivery)
                elif not self._route(queue, envelope.topic, delivery):
                    unroutable.append(index)
            self.changed.notify_all()
        return Delivered(unroutable, errors)

    def _route(self, queue: str | None, topic: str, delivery: Delivery) -> bool:
        """Append to `queue`, or to every queue bound to `topic`; False if none took it."""
        if queue is not None:
            targets = [queue] if queue in self.queues else []
            exchange, routing_key = "", queue
        else:
            targets = sorted(self._bindings.get(topic, ()))
            exchange, routing_key = naming.events_exchange(self.namespace), topic
        for target in targets:
            self.queues[target].append(
                dataclasses.replace(delivery, exchange=exchange, routing_key=routing_key)
            )
        return bool(targets)

    def _schedule(self, delay_s: float, queue: str | None, topic: str, delivery: Delivery) -> None:
        due_s = self.clock.now() + delay_s
        heapq.heappush(self._delayed, _Delayed(due_s, next(self._sequence), queue, topic, delivery))

    def _release_due(self) -> None:
        """Move delayed messages whose time has come to their queues (lock held)."""
        now = self.clock.now()
        while self._delayed and self._delayed[0].due_s <= now:
            due = heapq.heappop(self._delayed)
            if not self._route(due.queue, due.topic, due.delivery):
                log.warning(
                    "delayed_message_unroutable",
                    message_id=due.delivery.message_id,
                    topic=due.topic,
                )

    def advance_clock(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass: delayed messages due by then are delivered."""
        with self.changed:
            self.clock.advance(seconds)
            self._release_due()
            self.changed.notify_all()

    def delayed(self) -> int:
        """Messages waiting for their delay (or retry backoff) to pass."""
        with self.changed:
            return len(self._delayed)

    # Dead letters -----------------------------------------------------------------------

    def _dlq(self, actor: ActorRef | str) -> tuple[str, str]:
        """(actor queue, dead-letter queue) full names; raises if it does not exist."""
        queue = actor if isinstance(actor, str) else unique_queues([actor])[0].queue
        names = naming.queue_name(self.namespace, queue), naming.dlq_name(self.namespace, queue)
        if names[1] not in self.queues:
            raise ConfigurationError(f"no dead-letter queue {names[1]!r}")
        return names

    def dead_letters(
        self, actor: ActorRef | str, *, limit: int = 1000, offset: int = 0
    ) -> list[Delivery]:
        with self.changed:
            return list(self.queues[self._dlq(actor)[1]])[offset : offset + limit]

    def dead_letter_count(self, actor: ActorRef | str) -> int:
        with self.changed:
            return len(self.queues[self._dlq(actor)[1]])

    def find_dead_letter(self, actor: ActorRef | str, message_id: str) -> Delivery | None:
        with self.changed:
            for letter in self.queues[self._dlq(actor)[1]]:
                if letter.message_id == message_id:
                    return letter
        return None

    def replay_dead_letters(
        self,
        actor: ActorRef | str,
        *,
        message_ids: set[str] | None = None,
        on_replayed: Callable[[str], None] | None = None,
    ) -> int:
        with self.changed:
            queue, dlq = self._dlq(actor)
            kept: deque[Delivery] = deque()
            count = 0
            for letter in self.queues[dlq]:
                if message_ids is None or letter.message_id in message_ids:
                    self._route(queue, letter.topic or "", replayed(letter))
                    count += 1
                    if on_replayed is not None:
                        on_replayed(letter.message_id or "")
                else:
                    kept.append(letter)
            self.queues[dlq] = kept
            self.changed.notify_all()
        return count

    def purge_dead_letters(self, actor: ActorRef | str) -> int:
        with self.changed:
            dlq = self._dlq(actor)[1]
            count = len(self.queues[dlq])
            self.queues[dlq].clear()
        return count

    # Inspecting (tests) -----------------------------------------------------------------

    def pending(self, actor: ActorRef | None = None) -> int:
        """Messages waiting or being handled, in one actor's queue or in all actor queues."""
        with self.changed:
            names = self._actor_queue_names(actor)
            return sum(len(self.queues.get(n, ())) + self._unacked.get(n, 0) for n in names)

    def _actor_queue_names(self, actor: ActorRef | None) -> list[str]:
        if actor is not None:
            return [naming.queue_name(self.namespace, unique_queues([actor])[0].queue)]
        return [naming.queue_name(self.namespace, cls.queue) for cls in self._declared]

    # Running ----------------------------------------------------------------------------

    def join(
        self, *, raise_errors: bool = True, advance_clock: bool = True, max_messages: int = 100_000
    ) -> Stats:
        """Handle every waiting message of the declared actors in this thread, until idle.

        Messages that handlers publish are handled too, so a whole chain runs to its end;
        with `advance_clock`, the virtual clock jumps over delays and retry backoff, so
        "retried three times, then dead-lettered" runs at once.

        Args:
            raise_errors: Re-raise the first exception that sent a message to the
                dead-letter queue (the message is still dead-lettered, as a worker would).
            advance_clock: Jump the clock to the next delayed message when idle.
            max_messages: Stop after this many, against endless publishing loops.

        Returns:
            Counters of what was handled.

        Raises:
            Exception: With `raise_errors`, the first exception that dead-lettered a message.
        """
        stats = Stats()
        executors = {
            naming.queue_name(self.namespace, cls.queue): Executor(cls) for cls in self._declared
        }
        first_error: BaseException | None = None
        for _ in range(max_messages):
            taken = self._take(list(executors), advance_clock=advance_clock)
            if taken is None:
                break
            name, delivery = taken
            executor = executors[name]
            outcome = executor.run(delivery)
            self._settle(name, executor.actor.queue, delivery, outcome)
            stats.count(outcome)
            if outcome.fate == "dead_letter" and outcome.error is not None and first_error is None:
                first_error = outcome.error
        if raise_errors and first_error is not None:
            raise first_error
        return stats

    def _take(
        self, names: list[str], *, advance_clock: bool = False
    ) -> tuple[str, Delivery] | None:
        with self.changed:
            while True:
                self._release_due()
                for name in names:
                    waiting = self.queues.get(name)
                    if waiting:
                        self._unacked[name] = self._unacked.get(name, 0) + 1
                        return name, waiting.popleft()
                if not (advance_clock and self._delayed):
                    return None
                self.clock.advance(self._delayed[0].due_s - self.clock.now())

    def _settle(self, name: str, actor_queue: str, delivery: Delivery, outcome: Outcome) -> None:
        with self.changed:
            self._unacked[name] -= 1
            if outcome.fate == "retry":
                again = dataclasses.replace(delivery, headers=outcome.headers, redelivered=False)
                if outcome.delay_s > 0:
                    self._schedule(outcome.delay_s, name, delivery.topic or "", again)
                else:
                    self._route(name, delivery.topic or "", again)
            elif outcome.fate == "dead_letter":
                dlq = naming.dlq_name(self.namespace, actor_queue)
                self.queues.setdefault(dlq, deque()).append(
                    dataclasses.replace(
                        delivery, headers=outcome.headers, exchange="", routing_key=dlq
                    )
                )
            self.changed.notify_all()

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
        default_prefetch(threads, prefetch)
        return MemoryWorker(
            self,
            select_actors(actors, queues),
            threads=threads,
            shutdown_timeout_s=shutdown_timeout_s,
            hooks=hooks,
            max_body_bytes=max_body_bytes_or_default(max_body_bytes),
        )

    def close(self) -> None:
        """Nothing to close; kept for the common interface."""


class MemoryWorker:
    """Handler threads consuming a `MemoryBroker`'s queues, like `RabbitWorker` does.

    Delayed messages become due when the broker's virtual clock is advanced
    (`MemoryBroker.advance_clock`).
    """

    def __init__(
        self,
        broker: MemoryBroker,
        actors: list[type[Actor]],
        *,
        threads: int,
        shutdown_timeout_s: float,
        hooks: Sequence[MessageHooks] = (),
        max_body_bytes: int | None = None,
    ) -> None:
        self.broker = broker
        self.threads = threads
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stats = Stats()
        self.consuming = threading.Event()
        self.exit_code = 0
        self.fatal_error: str | None = None
        broker.declare(*actors)
        self._executors = {
            naming.queue_name(broker.namespace, cls.queue): Executor(
                cls, hooks=hooks, max_body_bytes=max_body_bytes_or_default(max_body_bytes)
            )
            for cls in actors
        }
        self._stopping = False
        self._pool: list[threading.Thread] = []
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start the handler threads."""
        for number in range(self.threads):
            thread = threading.Thread(
                target=self._loop, name=f"leveret-memory-handler-{number}", daemon=True
            )
            thread.start()
            self._pool.append(thread)
        self.consuming.set()
        log.info("worker_consuming", queues=sorted(self._executors), threads=self.threads)

    def _loop(self) -> None:
        names = list(self._executors)
        while True:
            with self.broker.changed:
                taken = None
                while not self._stopping:
                    taken = self.broker._take(names)
                    if taken is not None:
                        break
                    self.broker.changed.wait()
                if taken is None:
                    return
            name, delivery = taken
            executor = self._executors[name]
            outcome = executor.run(delivery)
            self.broker._settle(name, executor.actor.queue, delivery, outcome)
            self.stats.count(outcome)

    def threads_alive(self) -> bool:
        """Whether every handler thread is alive."""
        return bool(self._pool) and all(thread.is_alive() for thread in self._pool)

    def request_shutdown(self) -> None:
        """Stop taking messages; handlers in flight finish."""
        self.consuming.clear()
        with self.broker.changed:
            self._stopping = True
            self.broker.changed.notify_all()

    def shutdown(self, timeout_s: float | None = None) -> int:
        """Stop taking messages, wait for handlers in flight; return the exit code."""
        self.request_shutdown()
        limit = timeout_s if timeout_s is not None else self.shutdown_timeout_s
        for thread in self._pool:
            thread.join(limit)
        if any(thread.is_alive() for thread in self._pool):
            self.exit_code = 1
        self.consuming.clear()
        self._stopped.set()
        return self.exit_code

    def run(self) -> int:
        """Consume until SIGTERM or SIGINT (main thread) or `shutdown`."""
        run_until_stopped(self.start, self._stopped, self._on_signal)
        return self.exit_code

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=self.shutdown, daemon=True).start()
