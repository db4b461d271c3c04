"""A namespace's queues and exchanges on RabbitMQ, found and deleted (`leveret
delete-namespace`).

What belongs to a namespace ``shop`` is known by name or by proof, never by a prefix alone
(``shop.eu`` is another namespace, and ``shop2`` shares the prefix ``shop``):

- the namespace's own exchanges and queues, by their exact names (`naming.namespace_exchanges`,
  `naming.namespace_queues`: events, dead, the delay levels, the scheduler's, the status
  listener's);
- actor queues: through the management API, every queue whose dead-letter exchange is
  ``shop.dead`` (Leveret declares every actor queue so), with its ``.dlq`` and that one's
  lock, and every queue ``shop.dead`` dead-letters into; without the API, the queues of the
  actors given (`topology.queue_names`).

Nothing is deleted that holds messages unless asked, or that a process uses (consumers, or
an exclusive queue: a running scheduler's or dead-letter operation's lock).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from leveret.actors.actor import Actor
from leveret.schemas.errors import OperationError
from leveret.services.rabbitmq._admin import AdminChannel
from leveret.services.rabbitmq.management import ManagementAPI, ManagementUnavailable
from leveret.services.topology import declarations as topology
from leveret.services.topology import naming

_NOT_FOUND = 404
_RESOURCE_LOCKED = 405


@dataclass(frozen=True, slots=True)
class FoundQueue:
    """A queue of the namespace.

    Attributes:
        name: Its name.
        messages: Messages in it (ready and unacknowledged).
        consumers: Its consumers.
        held: Exclusive to a running process (a lock): deleting it is refused.
        disposable: Its messages are worth nothing once read (`leveret status`'s recent
            heartbeats): it is deleted with them.
    """

    name: str
    messages: int = 0
    consumers: int = 0
    held: bool = False
    disposable: bool = False

    @property
    def keeps_messages(self) -> bool:
        """Whether it holds messages that deleting it would lose."""
        return self.messages > 0 and not self.disposable


@dataclass(slots=True)
class NamespaceContents:
    """What a namespace holds on the broker.

    Attributes:
        namespace: The namespace.
        queues: Its queues, actor queues first.
        exchanges: Its exchanges.
        found_by: ``management`` (the API listed the vhost's queues) or ``names`` (only the
            names the namespace and the actors given make).
        management_error: Why the management API was not used, if it was asked for.
        others: How many queues whose name starts with the namespace were left out (another
            namespace's, or not declared by Leveret).
    """

    namespace: str
    queues: list[FoundQueue] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)
    found_by: str = "names"
    management_error: str | None = None
    others: int = 0


def namespace_contents(
    url: str,
    namespace: str,
    actors: Sequence[type[Actor]] = (),
    *,
    management: ManagementAPI | None = None,
) -> NamespaceContents:
    """Find a namespace's queues and exchanges.

    Args:
        url: The broker's AMQP URL.
        namespace: The namespace (checked).
        actors: Actors whose queues to look for by name (all that is found of actor queues
            when the management API does not answer).
        management: The management API to list the vhost with, if any.

    Raises:
        BrokerConnectionError: The broker cannot be reached.
    """
    found = NamespaceContents(namespace)
    names = topology.queue_names(namespace, actors) + naming.namespace_queues(namespace)
    exchanges = None
    if management is not None:
        try:
            names, exchanges = _through_management(found, management, names)
        except ManagementUnavailable as exc:
            found.management_error = str(exc)
    with AdminChannel(url) as channel:
        # Messages and consumers as AMQP tells them now: the management API's figures
        # are statistics, seconds old.
        listener = naming.status_queue(namespace)
        looked = (_queue(channel, name, name == listener) for name in names)
        found.queues = [queue for queue in looked if queue is not None]
        found.exchanges = [
            name
            for name in naming.namespace_exchanges(namespace)
            if (name in exchanges if exchanges is not None else _exchange(channel, name))
        ]
    return found


def delete_contents(
    url: str,
    found: NamespaceContents,
    *,
    with_messages: bool,
    on_deleted: Callable[[str, str], None] | None = None,
) -> None:
    """Delete what `namespace_contents` found: the queues, then the exchanges.

    Each queue is looked at again just before it is deleted, and deleted only while it has
    no consumer and (unless `with_messages`) no message: one that received either since it
    was listed stops the deletion there. (Quorum queues take no ``if-unused`` or
    ``if-empty`` condition, so a message published between that look and the deletion
    would go with the queue.)

    Args:
        url: The broker's AMQP URL.
        found: What to delete.
        with_messages: Delete queues that hold messages too.
        on_deleted: Called with ``("queue" | "exchange", name)`` after each deletion.

    Raises:
        OperationError: A queue got a consumer or (without `with_messages`) a message since
            it was listed, or is held by a process; what was deleted before stays deleted.
        BrokerConnectionError: The broker cannot be reached.
    """
    with AdminChannel(url) as channel:
        for listed in found.queues:
            now = _queue(channel, listed.name, listed.disposable)
            if now is None:
                continue  # gone meanwhile
            if now.held or now.consumers or (now.keeps_messages and not with_messages):
                raise OperationError(
                    f"queue {listed.name} is in use or holds messages since it was listed "
                    f"({now.messages} messages, {now.consumers} consumers); it and what "
                    "comes after it were not deleted"
                )
            channel.queue_delete(listed.name)
            if on_deleted is not None:
                on_deleted("queue", listed.name)
        for exchange in found.exchanges:
            channel.exchange_delete(exchange)
            if on_deleted is not None:
                on_deleted("exchange", exchange)


def _through_management(
    found: NamespaceContents, api: ManagementAPI, named: Iterable[str]
) -> tuple[list[str], set[str]]:
    """The namespace's queues and the exchanges named like it, from the management API's
    records (see the module's docstring)."""
    namespace = found.namespace
    records = {record["name"]: record for record in api.queue_records(namespace + ".")}
    dead = naming.dead_exchange(namespace)
    actor_queues = [
        name
        for name, record in records.items()
        if isinstance(record.get("arguments"), dict)
        and record["arguments"].get("x-dead-letter-exchange") == dead
    ]
    dead_lettered_into = {
        binding.get("destination")
        for binding in api.bindings_from(dead)
        if binding.get("destination_type") == "queue"
    }
    dlqs = [name + ".dlq" for name in actor_queues]
    dlqs += sorted(name for name in records if name in dead_lettered_into)
    locks = [name + ".lock" for name in dlqs]
    chosen = _unique([*sorted(actor_queues), *dlqs, *locks, *named])
    found.others = len(set(records) - set(chosen))
    found.found_by = "management"
    return [name for name in chosen if name in records], set(api.exchange_names(namespace + "."))


def _queue(channel: BlockingChannel, name: str, disposable: bool) -> FoundQueue | None:
    """The queue `name` as a passive declare sees it (on a channel of its own); None if
    there is none."""
    probe = channel.connection.channel()
    try:
        method = probe.queue_declare(name, passive=True).method
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _RESOURCE_LOCKED:
            return FoundQueue(name, held=True, disposable=disposable)  # another's exclusive
        if exc.reply_code == _NOT_FOUND:
            return None
        raise
    with contextlib.suppress(pika.exceptions.AMQPError):
        probe.close()
    return FoundQueue(
        name,
        messages=method.message_count,
        consumers=method.consumer_count,
        disposable=disposable,
    )


def _exchange(channel: BlockingChannel, name: str) -> bool:
    """Whether the exchange `name` exists (a passive declare on a channel of its own)."""
    probe = channel.connection.channel()
    try:
        probe.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _NOT_FOUND:
            return False
        raise
    with contextlib.suppress(pika.exceptions.AMQPError):
        probe.close()
    return True


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))
