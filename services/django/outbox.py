"""Writing to the outbox inside the caller's transaction, and what a row must hold.

The relay publishes rows another program may have written (or a bug, or an operator with
SQL): `check_buildable` is the one definition of a row it can publish, used when a row is
written (`store` refuses the others at the call) and again by the relay before it
publishes one (a row that fails it is set aside with its error, never blocking the others).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from django.db import connections, transaction

from leveret.schemas.errors import InvalidArgument
from leveret.services.broker import OutgoingMessage
from leveret.services.topology import naming
from leveret.services.topology.delays import MAX_DELAY_S, routing_key

_GROUP_ATTRIBUTE = "leveret_outbox_group"

AMQP_SHORT_STRING_BYTES = 255
"""Longest name, id or routing key AMQP carries (a short string)."""
MESSAGE_ID_CHARS = 64
"""The outbox's ``message_id`` column."""
MAX_HEADER_DEPTH = 16
"""Deepest nesting of lists and tables in a stored header value."""
_INT64 = 2**63


def store(item: OutgoingMessage, *, using: str, namespace: str | None = None) -> None:
    """Write `item` to the outbox on database `using`, in the current transaction (if any).

    Rows written by one transaction share a group key, which the relay uses to publish
    them in order.

    Args:
        item: The prepared message.
        using: The database alias.
        namespace: The namespace it will be published in (to check the names' lengths).

    Raises:
        InvalidArgument: The relay could not publish `item` as it would be stored (see
            `check_buildable`); nothing is written.
    """
    from leveret.django.models import OutboxMessage

    check_buildable(item, namespace=namespace)
    OutboxMessage.of(item, _group(using)).save(using=using)


def check_buildable(item: OutgoingMessage, *, namespace: str | None = None) -> None:
    """Check that the relay can publish `item` as the outbox stores it.

    Its delay fits the delay levels, its topic and queue are names AMQP carries (with
    `namespace`, the full names too), its ids fit their columns and AMQP, and its headers
    are a table of text keys whose values JSON stores and AMQP carries unchanged: text,
    whole numbers of 64 bits, true/false, null, and lists and tables of those (no
    fractions: AMQP tables as Leveret writes them carry none), nested at most
    `MAX_HEADER_DEPTH` deep.

    Raises:
        InvalidArgument: What is wrong, and what the outbox accepts.
    """
    envelope = item.envelope
    problem = (
        _delay_problem(item.delay_s)
        or _name_problem("topic", item.route.topic)
        or (None if item.route.queue is None else _name_problem("queue", item.route.queue))
        or _name_problem("message_id", envelope.message_id, limit=MESSAGE_ID_CHARS)
        or (
            None
            if envelope.correlation_id is None
            else _name_problem("correlation_id", envelope.correlation_id)
        )
        or _headers_problem(envelope.headers)
        or (None if isinstance(item.body, bytes) else "the body must be bytes")
        or (None if namespace is None else _full_names_problem(item, namespace))
    )
    if problem is not None:
        raise InvalidArgument(
            f"the outbox cannot keep message {str(envelope.message_id)[:64]!r}: {problem}"
        )


def _delay_problem(delay_s: object) -> str | None:
    if isinstance(delay_s, bool) or not isinstance(delay_s, int):
        return f"delay_s must be whole seconds, not {type(delay_s).__name__}"
    if not 0 <= delay_s <= MAX_DELAY_S:
        return f"delay_s must be 0 … {MAX_DELAY_S} s (the delay levels' range), not {delay_s}"
    return None


def _name_problem(what: str, value: object, *, limit: int = AMQP_SHORT_STRING_BYTES) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{what} must be non-empty text, not {value!r:.60}"
    size = len(value.encode("utf-8", "replace"))
    if size > limit:
        return f"{what} {value[:40]!r}… is {size} bytes; at most {limit} fit"
    return None


def _full_names_problem(item: OutgoingMessage, namespace: str) -> str | None:
    queue = item.route.queue
    if item.delay_s > 0:
        key = routing_key(
            item.delay_s, queue=queue, topic=item.route.topic if queue is None else None
        )
        return _name_problem("routing key (with its delay)", key)
    if queue is not None:
        return _name_problem("queue name", naming.queue_name(namespace, queue))
    return None


def _headers_problem(headers: object) -> str | None:
    if not isinstance(headers, Mapping):
        return f"headers must be a table (a dict of text keys), not {type(headers).__name__}"
    return _table_problem(headers, "headers", 1)


def _table_problem(table: Mapping[object, object], where: str, depth: int) -> str | None:
    for key, value in table.items():
        if not isinstance(key, str) or not key:
            return f"{where} has a key {key!r:.40} that is not non-empty text"
        problem = _name_problem(f"{where} key", key) or _value_problem(
            value, f"{where}[{key[:40]!r}]", depth
        )
        if problem is not None:
            return problem
    return None


def _value_problem(value: object, where: str, depth: int) -> str | None:
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int):
        if -_INT64 <= value < _INT64:
            return None
        return f"{where} is an integer beyond 64 bits, which AMQP cannot carry"
    if isinstance(value, list | Mapping):
        if depth >= MAX_HEADER_DEPTH:
            return f"{where} nests deeper than {MAX_HEADER_DEPTH} levels"
        if isinstance(value, Mapping):
            return _table_problem(value, where, depth + 1)
        for index, element in enumerate(value):
            problem = _value_problem(element, f"{where}[{index}]", depth + 1)
            if problem is not None:
                return problem
        return None
    return (
        f"{where} is a {type(value).__name__}; header values must be text, whole numbers, "
        "true/false, null, or lists and tables of those (put other data in the message)"
    )


def _group(using: str) -> str:
    connection = connections[using]
    if not connection.in_atomic_block:
        return uuid.uuid4().hex
    key: str | None = getattr(connection, _GROUP_ATTRIBUTE, None)
    if key is None:
        key = uuid.uuid4().hex
        setattr(connection, _GROUP_ATTRIBUTE, key)
        # Forget the key once the transaction commits. After a rollback it lives on into
        # the next transaction of this connection: merging two groups only orders more.
        transaction.on_commit(lambda: _forget(using, key), using=using)
    return key


def _forget(using: str, key: str) -> None:
    connection = connections[using]
    if getattr(connection, _GROUP_ATTRIBUTE, None) == key:
        delattr(connection, _GROUP_ATTRIBUTE)
