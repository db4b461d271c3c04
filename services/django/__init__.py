"""Leveret for Django: settings, transaction-aware publishing, outbox, relay, worker.

Add ``"services.django"`` to ``INSTALLED_APPS`` and a ``LEVERET`` dict to the settings;
see docs/django.md.

```python
from services.django import publish, publish_now

with transaction.atomic():
    order = Order.objects.create(...)
    publish(OrderPlaced(order_id=order.id))   # sent when the transaction commits
```
"""

from services.django.publishing import (
    TransactionalDispatcher,
    publish,
    publish_now,
    send,
    send_now,
)

__all__ = ["TransactionalDispatcher", "publish", "publish_now", "send", "send_now"]
