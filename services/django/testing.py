"""Testing a Django project's actors as they run in production, on the in-memory broker.

`project_memory_broker` is a `MemoryBroker` with the project's actors (``LEVERET["ACTORS"]``)
declared in its namespace, configured as the process's broker for the block. Every way
of publishing behaves as in production: `publish`, `Actor.send` and the
`leveret.django` helpers send after commit (nothing after a rollback), and with the outbox
(``OUTBOX`` or ``outbox=True``) they write rows, which `join` relays once committed.

```python
from django.test import TestCase
from leveret.django.testing import project_memory_broker


class OrderTests(TestCase):
    def setUp(self):
        self.broker = self.enterContext(project_memory_broker())

    def test_order_is_charged(self):
        with self.captureOnCommitCallbacks(execute=True):   # TestCase never commits
            self.client.post("/orders/", {...})
        self.broker.join()
```

With pytest, Leveret's plugin gives the same as the fixtures ``leveret_broker`` and
``leveret_eager`` (`leveret.pytest_plugin`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from leveret.actors.actor import ActorRef
from leveret.services.testing import MemoryBroker, memory_broker


@contextlib.contextmanager
def project_memory_broker(
    *actors: ActorRef,
    eager: bool = False,
    namespace: str | None = None,
    schedules: bool = True,
) -> Iterator[MemoryBroker]:
    """A fresh `MemoryBroker` for the project, configured as the process's broker.

    Args:
        actors: The actors to declare; the project's (``LEVERET["ACTORS"]``) if none.
        eager: Handle each message as soon as it is published (at commit inside a
            transaction), raising a handler's exception there; see `MemoryBroker`.
        namespace: The queues' namespace; the settings' ``NAMESPACE`` if None.
        schedules: Run the schedules of the code (``LEVERET["SCHEDULES"]`` and the
            `periodic` actors of ``ACTORS``) on the virtual clock: ``advance_clock`` sends
            their ticks (`MemoryBroker.add_schedules`). The database's entries are not.
    """
    from leveret.actors.schedules import schedules_in
    from leveret.django.registry import project_actors
    from leveret.django.settings import load

    found = load()
    declared = actors or tuple(project_actors())
    with memory_broker(*declared, namespace=namespace or found.namespace, eager=eager) as broker:
        entries = schedules_in([*found.actors, *found.schedules]) if schedules else []
        if entries:
            broker.add_schedules(*entries)
        yield broker
