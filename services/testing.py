"""Testing helpers for users' unit tests: an in-memory broker, configured for the test.

```python
import pytest
from services.testing import memory_broker

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
from collections.abc import Iterator

from actors import dispatch
from actors.actor import ActorRef
from services.memory import MemoryBroker


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
