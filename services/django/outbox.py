"""Writing to the outbox inside the caller's transaction."""

from __future__ import annotations

import uuid

from django.db import connections, transaction

from leveret.services.broker import Prepared

_GROUP_ATTRIBUTE = "leveret_outbox_group"


def store(item: Prepared, *, using: str) -> None:
    """Write `item` to the outbox on database `using`, in the current transaction (if any).

    Rows written by one transaction share a group key, which the relay uses to publish
    them in order.
    """
    from leveret.django.models import OutboxMessage

    OutboxMessage.of(item, _group(using)).save(using=using)


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
