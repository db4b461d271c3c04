"""`MemoryBroker`: the `Broker` in this process's memory, for unit tests and the demo.

Same routing (fan-out by topic, send to one queue), same wire format (messages are encoded
to JSON and decoded again, so validation behaves as on RabbitMQ), same dead letters.
"""

from __future__ import annotations

import signal
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import Any

from actors.actor import Actor, ActorRef
from actors.registry import unique_queues
from schemas import envelope as wire
from schemas.errors import PublishError
from services import naming
from services.broker import Broker, Prepared, Worker, default_prefetch, select_actors
from services.execution import Delivery, Executor, Outcome, Stats
from services.logs import get_logger

log = get_logger("leveret.memory")


class MemoryBroker(Broker):
    """`Broker` whose queues live in this process; see `Broker` for the arguments."""

    def __init__(
        self,
        url: str | None = "memory://",
        *,
        namespace: str | None = None,
        auto_declare: bool = True,
    ) -> None:
        super().__init__(url or "memory://", namespace=namespace, auto_declare=auto_declare)
        self.changed = threading.Condition()
        self.queues: dict[str, deque[Delivery]] = {}
        self._bindings: dict[str, set[str]] = {}
        self._unacked: dict[str, int] = {}

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

    def _deliver(self, items: Sequence[Prepared]) -> list[int]:
        unroutable: list[int] = []
        with self.changed:
            for index, item in enumerate(items):
                envelope = item.envelope
                if item.route.queue is None:
                    exchange = naming.events_exchange(self.namespace)
                    routing_key = item.route.topic
                    targets = sorted(self._bindings.get(routing_key, ()))
                else:
                    exchange = ""
                    routing_key = naming.queue_name(self.namespace, item.route.queue)
                    if routing_key not in self.queues:
                        raise PublishError(
                            f"no queue {routing_key!r} to deliver message "
                            f"{envelope.message_id} to; declare the actor first",
                            message_id=envelope.message_id,
                        )
                    targets = [routing_key]
                if not targets:
                    unroutable.append(index)
                for target in targets:
                    self.queues[target].append(
                        Delivery(
                            body=item.body,
                            topic=envelope.topic,
                            message_id=envelope.message_id,
                            correlation_id=envelope.correlation_id,
                            timestamp=int(envelope.timestamp.timestamp()),
                            headers={wire.ATTEMPT: envelope.attempt},
                            exchange=exchange,
                            routing_key=routing_key,
                        )
                    )
            self.changed.notify_all()
        return unroutable

    # Inspecting (tests) -----------------------------------------------------------------

    def pending(self, actor: ActorRef | None = None) -> int:
        """Messages waiting or being handled, in one actor's queue or in all actor queues."""
        with self.changed:
            names = self._actor_queue_names(actor)
            return sum(len(self.queues.get(n, ())) + self._unacked.get(n, 0) for n in names)

    def dead_letters(self, actor: ActorRef, *, limit: int = 1000) -> list[Delivery]:
        cls = unique_queues([actor])[0]
        with self.changed:
            waiting = self.queues.get(naming.dlq_name(self.namespace, cls.queue), deque())
            return list(waiting)[:limit]

    def _actor_queue_names(self, actor: ActorRef | None) -> list[str]:
        if actor is not None:
            return [naming.queue_name(self.namespace, unique_queues([actor])[0].queue)]
        return [naming.queue_name(self.namespace, cls.queue) for cls in self._declared]

    # Running ----------------------------------------------------------------------------

    def join(self, *, raise_errors: bool = True, max_messages: int = 100_000) -> Stats:
        """Handle every waiting message of the declared actors in this thread, until idle.

        Messages that handlers publish are handled too, so a whole chain runs to its end.

        Args:
            raise_errors: Re-raise the first handler exception (the message is still
                dead-lettered, as a worker would).
            max_messages: Stop after this many, against endless publishing loops.

        Returns:
            Counters of what was handled.

        Raises:
            Exception: With `raise_errors`, the first exception a handler raised.
        """
        stats = Stats()
        executors = {
            naming.queue_name(self.namespace, cls.queue): Executor(cls) for cls in self._declared
        }
        first_error: BaseException | None = None
        for _ in range(max_messages):
            taken = self._take(list(executors))
            if taken is None:
                break
            name, delivery = taken
            executor = executors[name]
            outcome = executor.run(delivery)
            self._settle(name, executor.actor.queue, delivery, outcome)
            stats.count(outcome)
            if outcome.error is not None and first_error is None:
                first_error = outcome.error
        if raise_errors and first_error is not None:
            raise first_error
        return stats

    def _take(self, names: list[str]) -> tuple[str, Delivery] | None:
        with self.changed:
            for name in names:
                waiting = self.queues.get(name)
                if waiting:
                    self._unacked[name] = self._unacked.get(name, 0) + 1
                    return name, waiting.popleft()
        return None

    def _settle(self, name: str, actor_queue: str, delivery: Delivery, outcome: Outcome) -> None:
        with self.changed:
            self._unacked[name] -= 1
            if outcome.fate == "dead_letter":
                dlq = naming.dlq_name(self.namespace, actor_queue)
                self.queues.setdefault(dlq, deque()).append(
                    Delivery(
                        body=delivery.body,
                        topic=delivery.topic,
                        message_id=delivery.message_id,
                        correlation_id=delivery.correlation_id,
                        timestamp=delivery.timestamp,
                        headers=outcome.headers,
                        exchange="",
                        routing_key=dlq,
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
    ) -> Worker:
        default_prefetch(threads, prefetch)
        return MemoryWorker(
            self,
            select_actors(actors, queues),
            threads=threads,
            shutdown_timeout_s=shutdown_timeout_s,
        )

    def close(self) -> None:
        """Nothing to close; kept for the common interface."""


class MemoryWorker:
    """Handler threads consuming a `MemoryBroker`'s queues, like `RabbitWorker` does."""

    def __init__(
        self,
        broker: MemoryBroker,
        actors: list[type[Actor]],
        *,
        threads: int,
        shutdown_timeout_s: float,
    ) -> None:
        self.broker = broker
        self.threads = threads
        self.shutdown_timeout_s = shutdown_timeout_s
        self.stats = Stats()
        self.consuming = threading.Event()
        self.exit_code = 0
        broker.declare(*actors)
        self._executors = {
            naming.queue_name(broker.namespace, cls.queue): Executor(cls) for cls in actors
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

    def request_shutdown(self) -> None:
        """Stop taking messages; handlers in flight finish."""
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
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self.start()
            while not self._stopped.wait(0.5):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.exit_code

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=self.shutdown, daemon=True).start()
