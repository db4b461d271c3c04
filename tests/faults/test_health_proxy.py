"""Health checks while the broker is unreachable (a cut proxy) and while draining."""

from __future__ import annotations

import signal

from leveret.services import RabbitBroker
from tests.faults.helpers import Spawn, events
from tests.proxy import TcpProxy
from tests.sample_actors import Job, Jobs
from tests.support import free_port, wait_health, wait_until


def test_health_is_503_while_the_broker_is_unreachable_and_200_after(
    spawn: Spawn, proxy: TcpProxy, rabbit_url: str, rabbit_broker: RabbitBroker
) -> None:
    """Connection cut: 503 while the worker reconnects; 200 again once it consumes again."""
    port = free_port()
    worker = spawn(url=proxy.url(rabbit_url), args=["--health-port", str(port)])
    wait_health(port, 200)
    proxy.cut()
    body = wait_health(port, 503, timeout_s=10)
    assert body["status"] == "unavailable"
    assert body["pid"] == worker.pid
    proxy.restore()
    wait_health(port, 200, timeout_s=60)
    rabbit_broker.send(Jobs, Job(n=1))
    wait_until(lambda: wait_health(port, 200).get("handled") == 1, 20, "the job handled")


def test_health_is_503_while_draining_after_sigterm(
    spawn: Spawn, record: str, rabbit_broker: RabbitBroker
) -> None:
    """After SIGTERM the worker answers 503 while its handler in flight finishes."""
    port = free_port()
    worker = spawn(args=["--health-port", str(port), "--shutdown-timeout", "30"])
    wait_health(port, 200)
    rabbit_broker.send(Jobs, Job(n=1, sleep_s=3))
    wait_until(lambda: events(record, "start", 1), 20, "the job to start")
    worker.signal(signal.SIGTERM)
    wait_health(port, 503, timeout_s=5)
    assert worker.wait(30) == 0
    assert events(record, "done", 1)
