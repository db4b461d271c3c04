"""The connection metrics follow a cut: connected and consuming drop, reconnects counts one.

A worker reaches RabbitMQ through a `TcpProxy`; every connection through it is cut. While
the proxy refuses, ``/metrics`` must say ``leveret_worker_connected 0`` and
``leveret_worker_consuming 0`` (the health endpoint answers 503 at the same time); once it
lets connections through again, both go back to 1 and ``leveret_worker_reconnects_total``
is 1.
"""

from __future__ import annotations

import pytest

from leveret.actors import actors_in
from leveret.services import RabbitBroker
from tests.observability.helpers import scrape, total
from tests.proxy import TcpProxy
from tests.support import WorkerProcess, free_port, wait_health, wait_until

pytestmark = [pytest.mark.fault]


def test_connection_gauges_and_reconnects_follow_a_cut(
    rabbit_broker: RabbitBroker, rabbit_url: str, namespace: str, proxy: TcpProxy
) -> None:
    rabbit_broker.declare(*actors_in(["tests.observed_actors"]))
    port = free_port()
    worker = WorkerProcess(
        ["tests.observed_actors"],
        namespace,
        url=proxy.url(rabbit_url),
        args=["--health-port", str(port)],
    )
    try:
        wait_health(port, 200)
        samples = scrape(port)
        assert total(samples, "leveret_worker_connected") == 1
        assert total(samples, "leveret_worker_reconnects_total") == 0

        proxy.cut()
        wait_until(
            lambda: total(scrape(port), "leveret_worker_connected") == 0, 20, "connected to be 0"
        )
        assert total(scrape(port), "leveret_worker_consuming") == 0
        wait_health(port, 503)

        proxy.restore()
        wait_health(port, 200, timeout_s=40)
        samples = scrape(port)
        assert total(samples, "leveret_worker_connected") == 1
        assert total(samples, "leveret_worker_consuming") == 1
        assert total(samples, "leveret_worker_reconnects_total") == 1
    finally:
        worker.stop_gracefully()
