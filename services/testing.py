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
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from leveret.actors import dispatch
from leveret.actors.actor import ActorRef
from leveret.actors.registry import unique_queues
from leveret.actors.schedules import Schedule, schedules_in
from leveret.schemas.errors import ConfigurationError, InvalidArgument
from leveret.services.broker import Broker
from leveret.services.delivery import Delivery
from leveret.services.memory._consumer import MemoryConsumer
from leveret.services.memory.clock import VirtualClock
from leveret.services.memory.transport import MemoryTransport
from leveret.services.middleware import Middleware
from leveret.services.observability.logs import ROOT_LOGGER, event_of
from leveret.services.runtime.stats import Stats
from leveret.services.runtime.worker import Worker
from leveret.services.scheduling import DEFAULT_GRACE_S, Scheduler, SentTick
from leveret.services.topology import naming
from leveret.services.transport import MemoryOptions

__all__ = ["MemoryBroker", "VirtualClock", "captured_logs", "memory_broker"]


class MemoryBroker(Broker):
    """A `Broker` whose queues live in this process; see `Broker` for the arguments.

    Extra Args:
        clock: The clock delays are measured on; a new `VirtualClock` by default.
        eager: Handle every message as soon as it is published, in the publishing thread
            (`join` after each publish), like Celery's ``task_always_eager``: a handler's
            exception that dead-letters the message is raised by the publish call. Inside
            a Django transaction that is at commit. The trade-off: the test no longer sees
            what is waiting, and a handler runs inside the caller's stack (and transaction,
            when the publish is not deferred to the commit).

    Attributes:
        feeders: Internal to Leveret's Django integration, which relays the outbox so:
            called by `join` when no message is waiting, each returns how many messages it
            published. Not an extension point (middleware is): it decides which messages
            exist, as the relay does in production.
    """

    transport: MemoryTransport

    def __init__(
        self,
        url: str | None = "memory://",
        *,
        namespace: str | None = None,
        auto_declare: bool = True,
        clock: VirtualClock | None = None,
        eager: bool = False,
        middleware: Iterable[Middleware] = (),
    ) -> None:
        super().__init__(
            url or "memory://",
            namespace=namespace,
            auto_declare=auto_declare,
            options=MemoryOptions(clock=clock),
            middleware=middleware,
        )
        self.eager = eager
        self.feeders: list[Callable[[], int]] = []
        self.sent_ticks: list[SentTick] = []
        """Every tick the schedules of `add_schedules` sent, in order."""
        self._schedulers: list[Scheduler] = []
        self._joining = threading.local()
        if eager:
            self.transport.eager_join = self.join_eagerly
        self.transport.answer_in_thread = self.answer_in_thread

    def join_eagerly(self) -> None:
        """`join`, unless this thread is joining already (a handler that publishes comes
        back here: the join running takes its message); what eager mode calls."""
        if getattr(self._joining, "depth", 0) > 0:
            return
        self.join()

    def answer_in_thread(self) -> None:
        """A handler this thread runs (in `join`, or eager mode) asked another actor: no
        other thread will answer it, so what waits is handled here, nested, before the
        handler waits for its answer (a handler's errors reach it as `RemoteError`)."""
        if getattr(self._joining, "depth", 0) > 0:
            self.join(raise_errors=False)

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

    def add_schedules(
        self,
        *schedules: Schedule | ModuleType | str | ActorRef,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> None:
        """Run these schedule entries on the virtual clock: `advance_clock` sends every tick
        that falls due, at its time, as a leading scheduler would (`sent_ticks` lists them).

        ```python
        broker.add_schedules(nightly_report)          # an entry: schedule(...)
        broker.add_schedules("shop.schedules")        # or a module (or its name), as
                                                      # LEVERET["SCHEDULES"] lists them
        broker.advance_clock(7 * 24 * 3600)   # a week: seven nightly reports sent
        broker.join()
        ```

        Args:
            schedules: Schedule entries, `periodic` actors (their entries), modules or
                module names (every entry they define, their periodic actors' included).
            grace_s: As for `Scheduler`.

        Raises:
            InvalidArgument: Something else, or a module that does not import.
            ConfigurationError: A scheduler of this broker leads already.
        """
        entries = _schedule_entries(schedules)
        scheduler = Scheduler(
            entries,
            self.transport.scheduling.backend(),
            namespace=self.namespace,
            grace_s=grace_s,
            clock=self.now,
            on_tick=self.sent_ticks.append,
        )
        if not scheduler.take_lead():
            raise ConfigurationError("a scheduler of this broker leads already")
        self._schedulers.append(scheduler)

    def now(self) -> datetime:
        """The virtual clock's time."""
        return datetime.fromtimestamp(self.clock.now(), UTC)

    def advance_clock(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass: delayed messages due by then are delivered,
        and the ticks of `add_schedules` are sent at their times."""
        target = self.clock.now() + max(0.0, seconds)
        while self._schedulers:
            due = [s.next_due() for s in self._schedulers]
            soonest = min((tick for tick in due if tick is not None), default=None)
            if soonest is None or soonest.timestamp() > target:
                break
            self.transport.advance_clock(soonest.timestamp() - self.clock.now())
            for scheduler in self._schedulers:
                scheduler.step()
        self.transport.advance_clock(target - self.clock.now())

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
        worker's handles each message (`Worker.handle`). When nothing waits, the `feeders`
        are asked for more (in Django, the outbox's committed rows).

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
        self._joining.depth = getattr(self._joining, "depth", 0) + 1
        try:
            return self._join(raise_errors, advance_clock, max_messages)
        finally:
            self._joining.depth -= 1

    def _join(self, raise_errors: bool, advance_clock: bool, max_messages: int) -> Stats:
        actors = sorted(self._declared, key=lambda cls: cls.queue)
        names = [naming.queue_name(self.namespace, cls.queue) for cls in actors]
        consumer = MemoryConsumer(self.transport, names, prefetch=max_messages)
        runtime = Worker(
            consumer, actors, namespace=self.namespace, threads=0, middleware=self.middleware
        )
        first_error: BaseException | None = None
        for _ in range(max_messages):
            job = consumer.take()
            if job is None and any([feed() for feed in self.feeders]):
                continue
            if job is None and advance_clock:
                job = consumer.take(advance_clock=True)
            if job is None:
                break
            outcome = runtime.handle(job)
            if outcome.fate == "dead_letter" and outcome.error is not None and first_error is None:
                first_error = outcome.error
        if raise_errors and first_error is not None:
            raise first_error
        return runtime.stats


@contextlib.contextmanager
def memory_broker(
    *actors: ActorRef, namespace: str = "test", eager: bool = False
) -> Iterator[MemoryBroker]:
    """A `MemoryBroker` with `actors` declared, configured as this process's broker.

    The previously configured broker (if any) is restored on exit. In a Django project it
    follows the transactions as the project's broker does (see `leveret.django`).

    Args:
        actors: Actors to declare, so that `publish` reaches them.
        namespace: Namespace of the in-memory queues.
        eager: Handle each message as it is published (see `MemoryBroker`).
    """
    previous = dispatch.configured()
    broker = MemoryBroker(namespace=namespace, eager=eager)
    broker.declare(*actors)
    dispatch.configure(broker)
    try:
        yield broker
    finally:
        dispatch.configure(previous)


@contextlib.contextmanager
def captured_logs(level: str = "debug") -> Iterator[list[dict[str, Any]]]:
    """Collect the log events of Leveret (and of every standard-library logger) as dicts.

    Each event is ``{"event": …, "level": …, "logger": …, **fields}``: Leveret's events
    with their fields, such as ``message_handled`` with ``actor``, ``message_id`` and
    ``outcome``; a handler's ``ctx.log`` events with the message's context.

    ```python
    with captured_logs() as events:
        broker.join()
    assert [e["outcome"] for e in events if e["event"] == "message_handled"] == ["handled"]
    ```

    Args:
        level: Collect events of Leveret's loggers from this level up (other loggers keep
            their own levels).
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigurationError(f"unknown log level {level!r}")
    events: list[dict[str, Any]] = []
    handler = _CollectingHandler(events)
    root = logging.getLogger()
    ours = logging.getLogger(ROOT_LOGGER)
    previous = ours.level
    ours.setLevel(numeric)
    root.addHandler(handler)
    try:
        yield events
    finally:
        root.removeHandler(handler)
        ours.setLevel(previous)


class _CollectingHandler(logging.Handler):
    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__()
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(event_of(record))


def _schedule_entries(given: tuple[object, ...]) -> list[Schedule]:
    """The entries of what `MemoryBroker.add_schedules` was given (checked here)."""
    entries: list[Schedule] = []
    for item in given:
        if isinstance(item, Schedule):
            entries.append(item)
        elif isinstance(item, str | ModuleType):
            name = item if isinstance(item, str) else item.__name__
            try:
                entries += schedules_in([name])
            except ConfigurationError as exc:
                raise InvalidArgument(f"add_schedules({name!r}): {exc}") from exc
        elif isinstance(getattr(item, "__leveret_schedules__", None), tuple | list):
            entries += list(getattr(item, "__leveret_schedules__"))  # noqa: B009
        else:
            raise InvalidArgument(
                f"add_schedules takes schedule entries (schedule(...)), periodic actors, "
                f"modules or module names, not {item!r:.80}"
            )
    return entries
