"""The in-memory broker in a Django project: it relays the outbox as the relay would.

A `MemoryBroker` configured in a Django project (the project's broker on ``memory://``,
`memory_broker`, the pytest fixtures) is attached here: its `join` first publishes the
outbox's committed rows, and an eager one handles them at commit.
"""

from __future__ import annotations

import weakref
from typing import Any

from django.db import transaction
from django.db.models.signals import post_save

from leveret.schemas.errors import ConfigurationError
from leveret.services.testing import MemoryBroker

_brokers: weakref.WeakSet[MemoryBroker] = weakref.WeakSet()  # attached
_written: weakref.WeakSet[MemoryBroker] = weakref.WeakSet()  # outbox rows to relay


def attach(broker: MemoryBroker) -> MemoryBroker:
    """Make `broker` relay the project's outbox when it joins, and join at each commit
    that wrote outbox rows when it is eager. Returns `broker`."""
    if broker not in _brokers:
        _brokers.add(broker)
        broker.feeders.append(lambda: relay_outbox(broker))
        post_save.connect(_outbox_row_saved, dispatch_uid="leveret.memory.outbox_saved")
    return broker


def relay_outbox(broker: MemoryBroker) -> int:
    """Publish the outbox's pending rows to `broker`, as the relay would; how many.

    Reads the database only after outbox rows were written while `broker` was the
    process's broker, so a test without database access can still `join`.
    """
    from leveret.actors.registry import actors_in
    from leveret.django.relay import Relay
    from leveret.django.settings import load

    if broker not in _written:
        return 0
    _written.discard(broker)
    found = load()
    relay = Relay(broker, using=found.database, actors=actors_in(found.actors), prune_after_s=None)
    sent = 0
    while True:
        batch = relay.run_once()
        if not batch:
            return sent
        sent += batch


def _outbox_row_saved(sender: Any, *, created: bool, using: str, **_kwargs: Any) -> None:
    from leveret.actors import dispatch
    from leveret.django.models import OutboxMessage

    if sender is not OutboxMessage or not created:
        return
    try:
        current = dispatch.current()
    except ConfigurationError:  # nothing configured: no memory broker of ours either
        return
    broker = getattr(current, "broker", current)  # a TransactionalDispatcher's broker
    if not isinstance(broker, MemoryBroker) or broker not in _brokers:
        return
    _written.add(broker)
    if broker.eager:
        # As the relay would: the rows go out once their transaction committed.
        transaction.on_commit(broker.join_eagerly, using=using)
