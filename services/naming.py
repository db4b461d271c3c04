"""Names of every exchange and queue Leveret declares. Nobody formats them elsewhere."""

from __future__ import annotations

import re

from leveret.schemas.errors import ConfigurationError

DEFAULT_NAMESPACE = "leveret"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def check_namespace(namespace: str) -> str:
    """Return `namespace` if it is usable as a name prefix.

    Raises:
        ConfigurationError: It is empty, too long, or holds characters other than letters,
            digits, '_', '-', '.'.
    """
    if not _NAMESPACE.match(namespace) or len(namespace) > 80:
        raise ConfigurationError(
            f"invalid namespace {namespace!r}: use dot-separated words of letters, digits, "
            "'_' or '-' (at most 80 characters)"
        )
    return namespace


def events_exchange(namespace: str) -> str:
    """The topic exchange `publish` sends to; routing key = topic."""
    return f"{namespace}.events"


def dead_exchange(namespace: str) -> str:
    """The direct exchange the broker dead-letters into (delivery limit)."""
    return f"{namespace}.dead"


def queue_name(namespace: str, queue: str) -> str:
    """An actor's queue."""
    return f"{namespace}.{queue}"


def dlq_name(namespace: str, queue: str) -> str:
    """An actor's dead-letter queue."""
    return f"{namespace}.{queue}.dlq"


def dlq_lock(namespace: str, queue: str) -> str:
    """The exclusive queue held by whoever operates an actor's dead-letter queue (list,
    show, replay, purge): one operation at a time."""
    return f"{namespace}.{queue}.dlq.lock"


def delay_exchange(namespace: str, level: int, queues: str = "classic") -> str:
    """The topic exchange of delay level `level` (messages wait 2^level s there), of the
    ``classic`` levels or of the ``quorum`` ones (replicated, for a cluster)."""
    if queues == "quorum":
        return f"{namespace}.delay.quorum.{level}"
    return f"{namespace}.delay.{level}"


def delay_queue(namespace: str, level: int, queues: str = "classic") -> str:
    """The TTL queue of delay level `level`, classic or quorum."""
    return delay_exchange(namespace, level, queues)


def delay_deliver_exchange(namespace: str, queues: str = "classic") -> str:
    """Where delayed messages leave the (classic or quorum) delay levels for actor queues."""
    if queues == "quorum":
        return f"{namespace}.delay.quorum.deliver"
    return f"{namespace}.delay.deliver"


def delay_unrouted(namespace: str) -> str:
    """The fan-out exchange, and the queue, of delayed messages that no queue took when
    their delay was over (quorum levels only: they would otherwise be retried forever)."""
    return f"{namespace}.delay.unrouted"


def scheduler_lock(namespace: str) -> str:
    """The exclusive queue whose declaring connection is the scheduler leader (no actor
    queue can be named so: theirs never start with an underscore)."""
    return f"{namespace}._scheduler.lock"


def scheduler_state(namespace: str) -> str:
    """The stream holding the last tick sent of each schedule entry."""
    return f"{namespace}._scheduler.state"


def heartbeats_exchange(namespace: str) -> str:
    """The fanout exchange worker heartbeats go to (non-durable: nothing is stored unless
    a `leveret status` listens)."""
    return f"{namespace}._heartbeats"


def status_queue(namespace: str) -> str:
    """The queue `leveret status` reads recent heartbeats from (it expires when unused)."""
    return f"{namespace}._status.heartbeats"
