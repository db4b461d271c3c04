"""What the worker runtime needs from a broker: a `Consumer` of actor queues.

The runtime (`leveret.services.runtime.worker.Worker`) runs handlers on its threads, decides each
delivery's outcome, and owns shutdown; the consumer owns everything that depends on the
broker: receiving deliveries (within its prefetch), settling each one (ack, or publish the
retry or dead letter and then ack), giving deliveries back, and stopping. RabbitMQ's
consumer (`leveret.services.rabbitmq`) and the in-memory broker's
(`leveret.services.memory`) implement it.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from leveret.services.delivery import Delivery, Outcome

Receive = Callable[["Job"], None]
"""Called by the consumer with each delivery it receives (from the consumer's own thread)."""

Fail = Callable[[str, int], None]
"""Called by the consumer when it cannot go on: (why, exit code for the process)."""


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """How a worker wants its actors' queues consumed (`Transport.consumer`).

    Attributes:
        prefetch: Deliveries held unacknowledged (the first value, with `adaptive`).
        capacity: Handlers the runtime runs at once (its threads, plus its event loop's
            concurrency when it has async handlers).
        adaptive: Let the consumer raise and lower its prefetch with the handlers' speed
            (where the transport can).
    """

    prefetch: int
    capacity: int = 1
    adaptive: bool = False


@dataclass(slots=True, eq=False)
class Job:
    """One delivery handed to the runtime.

    Attributes:
        delivery: What arrived.
        queue: The actor queue it came from (full name); picks the executor.
        generation: The consumer's channel generation at delivery; a job of an older one can
            no longer be settled (its channel is gone: the broker redelivers it).
        tag: The consumer's own token to settle it with (RabbitMQ's delivery tag).
    """

    delivery: Delivery
    queue: str
    generation: int = 0
    tag: int = 0
    handled_s: float = 0.0
    """How long its handling took (set by the runtime before settling it)."""


class Consumer(ABC):
    """Consumes some actor queues of one broker, for one worker runtime.

    Every method may be called from any thread unless it says otherwise.

    Attributes:
        consuming: Set while deliveries flow; cleared while reconnecting, after a consumer
            was cancelled, and once `stop_consuming` was called.
    """

    consuming: threading.Event

    @abstractmethod
    def start(self, receive: Receive, fail: Fail) -> None:
        """Start consuming (returns at once): each delivery is handed to `receive`.

        Args:
            receive: Called with each job; must not block for long.
            fail: Called when the consumer cannot go on (a refused declaration: exit code 2;
                a fault of its own thread: 3).
        """

    @abstractmethod
    def current(self, job: Job) -> bool:
        """Whether `job` can still be settled (its channel has not died since)."""

    @abstractmethod
    def settle(self, job: Job, outcome: Outcome) -> None:
        """Act on a handled delivery: ack, or publish its retry or dead letter, then ack.

        A retry or dead letter is confirmed by the broker before the original is acked; if
        it is not stored, the original goes back to its queue, never nowhere.
        """

    @abstractmethod
    def give_back(self, job: Job, *, failed: bool) -> None:
        """Return a delivery to its queue.

        Args:
            job: The delivery.
            failed: True when handling it failed in a way that may be its fault (counted
                towards the queue's delivery limit); False when it was not started.
        """

    @abstractmethod
    def stop_consuming(self) -> None:
        """Take no more deliveries (those already taken may still be settled)."""

    @abstractmethod
    def wait_settled(self, timeout_s: float) -> bool:
        """Wait until every delivery taken is settled or given back (confirms included).

        Returns:
            Whether that happened within `timeout_s`.
        """

    @abstractmethod
    def close(self) -> None:
        """Stop for good and release the connection; deliveries not settled come back."""

    @abstractmethod
    def alive(self) -> bool:
        """Whether the consumer's own thread runs (health checks)."""

    @property
    def presence(self) -> Presence:
        """How operations see this consumer's connection and announce its worker (metrics,
        `leveret.services.operations.heartbeats`); by default `InProcess`, which has no
        connection and drops heartbeats."""
        return InProcess()

    def log_fields(self) -> dict[str, object]:
        """Extra facts for the runtime's log lines (e.g. whether it is connected)."""
        return {}

    def now(self) -> float:
        """Seconds since the epoch, against which an ask's deadline is read (real time; the
        in-memory broker's virtual clock there)."""
        return time.time()


class Presence(Protocol):
    """What operations need of a consumer: its connection, and a way out for heartbeats."""

    def connection_state(self) -> tuple[bool, int]:
        """Whether it is connected now, and how many connections it opened so far (metrics)."""
        ...

    def local_address(self) -> str | None:
        """This end's address of the connection to the broker, ``host:port`` (heartbeats)."""
        ...

    def publish_heartbeat(self, body: bytes) -> None:
        """Send a heartbeat to the namespace's heartbeats exchange, without waiting or
        confirming; dropped when not connected (`leveret.services.operations.heartbeats`)."""
        ...


@dataclass(frozen=True, slots=True)
class InProcess:
    """The `Presence` of a consumer without a connection: always connected (one connection),
    no address.

    Attributes:
        keep_heartbeat: Called with each heartbeat (None: heartbeats are dropped).
    """

    keep_heartbeat: Callable[[bytes], None] | None = None

    def connection_state(self) -> tuple[bool, int]:
        """Connected, over one connection."""
        return True, 1

    def local_address(self) -> str | None:
        """None: there is no connection to have an address."""
        return None

    def publish_heartbeat(self, body: bytes) -> None:
        """Hand `body` to `keep_heartbeat`, if any."""
        if self.keep_heartbeat is not None:
            self.keep_heartbeat(body)
