"""A worker's options, checked before anything starts: `Broker.worker` builds from them.

Which actors run (`select_actors`), how many handlers at once (`check_concurrency`), the
first prefetch (`default_prefetch`) and the largest body (`max_body_bytes_or_default`);
`worker_options` checks them all and says what the consumer needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

from leveret.actors.actor import Actor, ActorRef
from leveret.actors.checks import is_count
from leveret.actors.registry import unique_queues
from leveret.schemas.errors import ConfigurationError
from leveret.services.runtime.eventloop import DEFAULT_CONCURRENCY
from leveret.services.runtime.execution import DEFAULT_MAX_BODY_BYTES
from leveret.services.topology import naming


class WorkerArgs(TypedDict, total=False):
    """The keyword arguments of `Broker.worker`, all optional; `worker_options` checks them.

    Attributes:
        threads: Sync handlers running at once (one thread each); 8 by default.
        concurrency: ``async def`` handlers running at once, on the worker's event loop
            (which starts only when an actor has one); `DEFAULT_CONCURRENCY` by default.
        prefetch: Deliveries held unacknowledged. By default it starts at `default_prefetch`
            and adapts on RabbitMQ: raised while handlers are fast (up to
            `leveret.services.rabbitmq.MAX_ADAPTIVE_PREFETCH`), so that the broker round
            trip does not starve the handlers, and kept low while they are slow, so that a
            worker never hoards messages other workers could run. A number fixes it.
        queues: Only these queues (names without namespace) of the actors.
        shutdown_timeout_s: How long `Worker.shutdown` waits for handlers in flight (30 s).
        max_body_bytes: Bodies larger than this are dead-lettered unread (reason
            ``too_large``); 16 MiB by default.
    """

    threads: int
    concurrency: int
    prefetch: int | None
    queues: Iterable[str] | None
    shutdown_timeout_s: float
    max_body_bytes: int | None


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """A worker's options, checked (see `worker_options`).

    Attributes:
        actors: The actors to run, their queue names checked in the namespace.
        prefetch: The first prefetch (given, or `default_prefetch`).
        adaptive: No prefetch was given: it adapts (on RabbitMQ).
        capacity: Handlers that may run at once: threads for sync handlers plus the
            concurrency for async ones (at least 1).
        max_body_bytes: Larger bodies are dead-lettered unread.
        threads: As given (`WorkerArgs`).
        concurrency: As given.
        shutdown_timeout_s: As given.
    """

    actors: list[type[Actor]]
    prefetch: int
    adaptive: bool
    capacity: int
    max_body_bytes: int
    threads: int
    concurrency: int
    shutdown_timeout_s: float


def worker_options(
    actors: Iterable[ActorRef],
    *,
    namespace: str,
    threads: int = 8,
    concurrency: int = DEFAULT_CONCURRENCY,
    prefetch: int | None = None,
    queues: Iterable[str] | None = None,
    shutdown_timeout_s: float = 30.0,
    max_body_bytes: int | None = None,
) -> WorkerOptions:
    """Check a worker's options (`WorkerArgs` says what each is) and derive the rest.

    Raises:
        ConfigurationError: An option out of range, a queue name too long in `namespace`,
            or no actor to run.
    """
    selected = select_actors(actors, queues)
    for actor in selected:
        naming.check_queue(namespace, actor.queue)
    check_concurrency(concurrency)
    kinds = {handler.is_async for actor in selected for handler in actor.handlers.values()}
    sync_slots = threads if False in kinds else 0
    async_slots = concurrency if True in kinds else 0
    return WorkerOptions(
        actors=selected,
        prefetch=default_prefetch(
            threads, prefetch, async_slots=async_slots, sync_handlers=bool(sync_slots)
        ),
        adaptive=prefetch is None,
        capacity=max(1, sync_slots + async_slots),
        max_body_bytes=max_body_bytes_or_default(max_body_bytes),
        threads=threads,
        concurrency=concurrency,
        shutdown_timeout_s=shutdown_timeout_s,
    )


def select_actors(actors: Iterable[ActorRef], queues: Iterable[str] | None) -> list[type[Actor]]:
    """The actors to run, restricted to `queues` when given.

    Raises:
        ConfigurationError: A queue named in `queues` belongs to none of the actors, or no
            actor is left.
    """
    classes = unique_queues(actors)
    if queues is not None:
        wanted = set(queues)
        unknown = wanted - {cls.queue for cls in classes}
        if unknown:
            raise ConfigurationError(
                f"--queues names {sorted(unknown)}, which no given actor consumes; known: "
                f"{sorted(cls.queue for cls in classes)}"
            )
        classes = [cls for cls in classes if cls.queue in wanted]
    if not classes:
        raise ConfigurationError("no actors to run: name modules that define actors")
    return classes


def check_concurrency(concurrency: int) -> None:
    """Raise `ConfigurationError` unless `concurrency` is a whole number from 1."""
    if not is_count(concurrency):
        raise ConfigurationError(
            f"concurrency (async handlers at once) must be a whole number of at least 1, "
            f"not {concurrency!r}"
        )


def max_body_bytes_or_default(max_body_bytes: int | None) -> int:
    """The worker's maximum body size: `max_body_bytes`, or 16 MiB.

    Raises:
        ConfigurationError: Not a positive number of bytes.
    """
    if max_body_bytes is None:
        return DEFAULT_MAX_BODY_BYTES
    if not is_count(max_body_bytes):
        raise ConfigurationError(
            f"max_body_bytes must be a positive number of bytes, not {max_body_bytes!r}"
        )
    return max_body_bytes


def default_prefetch(
    threads: int, prefetch: int | None, *, async_slots: int = 0, sync_handlers: bool = True
) -> int:
    """The first prefetch, unless given: twice the threads, for a worker of sync handlers.

    With async handlers (`async_slots`: the event loop's concurrency) it is that
    concurrency plus 8 more (a message for each async handler, a few more to cover the
    broker round trip), plus twice the threads when there are sync handlers too.
    """
    if threads < 1:
        raise ConfigurationError(f"threads must be at least 1, not {threads}")
    if prefetch is None:
        if async_slots:
            return (2 * threads if sync_handlers else 0) + async_slots + 8
        return 2 * threads
    if prefetch < 1:
        raise ConfigurationError(f"prefetch must be at least 1, not {prefetch}")
    return prefetch
