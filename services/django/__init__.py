"""Leveret for Django: settings, transaction-aware publishing, outbox, relay, worker.

Add ``"leveret.django"`` to ``INSTALLED_APPS`` and a ``LEVERET`` dict to the settings;
see docs/django.md in the Leveret repository (and ``python -m pydoc leveret.django.settings``
for the settings).

```python
from leveret.django import publish, publish_now

with transaction.atomic():
    order = Order.objects.create(...)
    publish(OrderPlaced(order_id=order.id))   # sent when the transaction commits
```
"""

from leveret.django.publishing import (
    TransactionalDispatcher,
    publish,
    publish_now,
    send,
    send_now,
    use_outbox,
)

__all__ = ["TransactionalDispatcher", "publish", "publish_now", "send", "send_now", "use_outbox"]
