"""Names of every exchange and queue Leveret declares. Nobody formats them elsewhere.

Every name and routing or binding key is an AMQP short string: at most
`SHORT_STRING_BYTES`. Each is checked where what it is made of is first known: a topic when
its message class is defined, an actor's queue name when the actor is defined (its delay
binding key), the namespace when it is given (`check_namespace`), and a namespace with an
actor's queue (`check_queue`) before anything of theirs is declared or read.
"""

from __future__ import annotations

import re

from leveret.schemas.errors import ConfigurationError
from leveret.services.topology.delays import LEVELS

DEFAULT_NAMESPACE = "leveret"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
MAX_NAMESPACE_CHARACTERS = 80
SHORT_STRING_BYTES = 255
"""AMQP's limit on names and routing keys (short strings), in bytes."""


def check_namespace(namespace: str) -> str:
    """Return `namespace` if it is usable as a name prefix.

    Raises:
        ConfigurationError: It is empty, too long, or holds characters other than letters,
            digits, '_', '-', '.'.
    """
    if not _NAMESPACE.match(namespace) or len(namespace) > MAX_NAMESPACE_CHARACTERS:
        raise ConfigurationError(
            f"invalid namespace {namespace!r}: use dot-separated words of letters, digits, "
            f"'_' or '-' (at most {MAX_NAMESPACE_CHARACTERS} characters)"
        )
    for name in namespace_exchanges(namespace) + namespace_queues(namespace):
        over = len(name.encode()) - SHORT_STRING_BYTES
        if over > 0:  # never with 80 ASCII characters: kept in case either changes
            raise ConfigurationError(
                f"namespace {namespace!r} makes the name {name!r} {over} bytes over AMQP's "
                f"limit of {SHORT_STRING_BYTES}: shorten the namespace by {over} bytes"
            )
    return namespace


def check_queue(namespace: str, queue: str) -> str:
    """Return `queue` if the names an actor queue of that name gets in `namespace` fit
    AMQP's short strings: the queue, its dead-letter queue, and that one's lock (the
    longest). What depends on the queue name alone (its delay binding key) is checked when
    the actor is defined.

    Raises:
        ConfigurationError: A name is too long; the message says which, by how many bytes,
            and what to shorten.
    """
    longest = dlq_lock(namespace, queue)
    over = len(longest.encode()) - SHORT_STRING_BYTES
    if over > 0:
        raise ConfigurationError(
            f"namespace {namespace!r} and queue {queue!r} make the name of the dead-letter "
            f"queue's lock {longest!r} {len(longest.encode())} bytes, {over} bytes over "
            f"AMQP's limit of {SHORT_STRING_BYTES}: shorten the namespace or the queue name "
            f"by {over} bytes"
        )
    return queue


def namespace_exchanges(namespace: str) -> list[str]:
    """Every exchange of a namespace (actors have none of their own)."""
    names = [events_exchange(namespace), dead_exchange(namespace)]
    for queues in ("classic", "quorum"):
        names += [delay_exchange(namespace, level, queues) for level in range(LEVELS)]
        names.append(delay_deliver_exchange(namespace, queues))
    names += [delay_unrouted(namespace), heartbeats_exchange(namespace)]
    return names


def namespace_queues(namespace: str) -> list[str]:
    """Every queue of a namespace that belongs to no actor: the delay levels, the unrouted
    delayed messages, the scheduler's lock and state, and `leveret status`'s listener."""
    names = [
        delay_queue(namespace, level, queues)
        for queues in ("classic", "quorum")
        for level in range(LEVELS)
    ]
    return [
        *names,
        delay_unrouted(namespace),
        scheduler_lock(namespace),
        scheduler_state(namespace),
        status_queue(namespace),
    ]


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
