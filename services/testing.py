"""Testing helpers for users' unit tests: `MemoryBroker`, and `memory_broker` to configure one.

`MemoryBroker` is a `Broker` whose queues live in this process: `join` handles everything
waiting in the calling thread, jumping the virtual clock over delays and retry backoff, so
"retried three times, then dead-lettered" runs at once and no test sleeps;
`broker.worker(...)` runs handler threads as the RabbitMQ worker does.

```python
import pytest
from leveret.services.testing import memory_broker

@pytest.fixture
def broker():
    with memory_broker(Billing, send_welcome) as broker:
        yield broker

def test_order_is_charged(broker):
    Billing.send(OrderPlaced(order_id=1, total=Decimal("9.90")))
    broker.join()                     # handles everything, re-raises a handler's exception
    assert broker.dead_letters(Billing) == []
```
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator

from leveret.actors import dispatch
from leveret.actors.actor import ActorRef
from leveret.actors.registry import unique_queues
from leveret.services import naming
from leveret.services.broker import Broker
from leveret.services.memory._consumer import MemoryConsumer
from leveret.services.memory.clock import VirtualClock
from leveret.services.memory.transport import MemoryTransport
from leveret.services.runtime.execution import Delivery, Stats
from leveret.services.runtime.worker import Worker
from leveret.services.transport import MemoryOptions


class MemoryBroker(Broker):
    """A `Broker` whose queues live in this process; see `Broker` for the arguments.

    Extra Args:
        clock: The clock delays are measured on; a new `VirtualClock` by default.
    """

    transport: MemoryTransport

    def __init__(
        self,
        url: str | None = "memory://",
        *,
        namespace: str | None = None,
        auto_declare: bool = True,
        clock: VirtualClock | None = None,
    ) -> None:
        super().__init__(
            url or "memory://",
            namespace=namespace,
            auto_declare=auto_declare,
            options=MemoryOptions(clock=clock),
        )

    @property
    def clock(self) -> VirtualClock:
        """The clock delays are measured on."""
        return self.transport.clock

    @property
    def changed(self) -> threading.Condition:
        """Held while queues change; notified after each change."""
        return self.transport.changed

    @property
    def queues(self) -> dict[str, deque[Delivery]]:
        """Every queue by full name (actor queues and `.dlq`s)."""
        return self.transport.queues

    def advance_clock(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass: delayed messages due by then are delivered."""
        self.transport.advance_clock(seconds)

    def delayed(self) -> int:
        """Messages waiting for their delay (or retry backoff) to pass."""
        return self.transport.delayed()

    def pending(self, actor: ActorRef | None = None) -> int:
        """Messages waiting or being handled, in one actor's queue or in all actor queues."""
        classes = unique_queues([actor]) if actor is not None else list(self._declared)
        names = [naming.queue_name(self.namespace, cls.queue) for cls in classes]
        with self.changed:
            return sum(
                len(self.queues.get(name, ())) + self.transport.unacked.get(name, 0)
                for name in names
            )

    def join(
        self, *, raise_errors: bool = True, advance_clock: bool = True, max_messages: int = 100_000
    ) -> Stats:
        """Handle every waiting message of the declared actors in this thread, until idle.

        Messages that handlers publish are handled too, so a whole chain runs to its end;
        with `advance_clock`, the virtual clock jumps over delays and retry backoff, so
        "retried three times, then dead-lettered" runs at once. The same runtime as the
        worker's handles each message (`Worker.handle`).

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
        actors = sorted(self._declared, key=lambda cls: cls.queue)
        names = [naming.queue_name(self.namespace, cls.queue) for cls in actors]
        consumer = MemoryConsumer(self.transport, names, prefetch=max_messages)
        runtime = Worker(consumer, actors, namespace=self.namespace, threads=0)
        first_error: BaseException | None = None
        for _ in range(max_messages):
            job = consumer.take(advance_clock=advance_clock)
            if job is None:
                break
            outcome = runtime.handle(job)
            if outcome.fate == "dead_letter" and outcome.error is not None and first_error is None:
                first_error = outcome.error
        if raise_errors and first_error is not None:
            raise first_error
        return runtime.stats


@contextlib.contextmanager
def memory_broker(*actors: ActorRef, namespace: str = "test") -> Iterator[MemoryBroker]:
    """A `MemoryBroker` with `actors` declared, configured as this process's broker.

    The previously configured broker (if any) is restored on exit.

    Args:
        actors: Actors to declare, so that `publish` reaches them.
        namespace: Namespace of the in-memory queues.
    """
    previous = dispatch._current
    broker = MemoryBroker(namespace=namespace)
    broker.declare(*actors)
    dispatch.configure(broker)
    try:
        yield broker
    finally:
        dispatch.configure(previous)
