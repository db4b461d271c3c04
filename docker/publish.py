"""The compose demo's publisher: sends the demo's messages to the scaled workers, forever.

Run by the ``publisher`` service of ``docker/compose.yaml`` (``python /app/publish.py``);
the broker comes from ``$LEVERET_BROKER_URL`` and ``$LEVERET_NAMESPACE``, the pace from
``$PUBLISH_INTERVAL_S`` (default 1). Stops at once on SIGTERM. While the broker is down
(a restart) each failed publish is logged and the next order is tried an interval later.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from decimal import Decimal

from leveret import Broker, PublishError, configure, publish
from leveret.services.cli.demo import DEMO_ACTORS, OrderPlaced, UserSignedUp, send_welcome
from leveret.services.observability.logs import configure_logging, get_logger


def main() -> None:
    """Declare the demo's topology, then publish an order and a sign-up every interval."""
    configure_logging("info")
    log = get_logger("leveret.demo.publisher")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    interval_s = float(os.environ.get("PUBLISH_INTERVAL_S", "1"))
    with Broker() as broker:
        configure(broker)
        broker.declare(*DEMO_ACTORS)
        for n in itertools.count(1):
            if stop.is_set():
                break
            # Every tenth order has a negative total: Billing rejects it into its DLQ.
            total = Decimal("-1") if n % 10 == 0 else Decimal(n % 97) + Decimal("0.50")
            try:
                publish(OrderPlaced(order_id=n, email=f"user{n}@example.com", total=total))
                send_welcome.send(UserSignedUp(email=f"user{n}@example.com"))
            except PublishError as exc:  # the broker is down (a restart): go on once back
                log.warning("demo_publish_failed", order_id=n, error=str(exc))
            else:
                log.info("demo_published", order_id=n)
            stop.wait(interval_s)


if __name__ == "__main__":
    main()
