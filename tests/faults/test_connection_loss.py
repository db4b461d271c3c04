"""Connections cut under a worker and a publisher: both reconnect by themselves, lose nothing."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from leveret.schemas.errors import PublishError
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.faults.helpers import Spawn, done_numbers, events
from tests.proxy import TcpProxy
from tests.sample_actors import Job, Jobs
from tests.support import take_all, wait_until

pytestmark = [pytest.mark.fault]

CUT_S = 3.0
PREFETCH = 8


def test_worker_reconnects_after_cut_and_drains_the_rest(
    rabbit_broker: RabbitBroker, spawn: Spawn, record: str, proxy: TcpProxy, rabbit_url: str
) -> None:
    """A worker whose connection is cut reconnects by itself; every message is handled."""
    rabbit_broker.declare(Jobs)
    worker = spawn(url=proxy.url(rabbit_url), args=["--threads", "4", "--prefetch", str(PREFETCH)])
    worker.wait_consuming()
    sent = list(range(1, 61))
    for n in sent:
        rabbit_broker.send(Jobs, Job(n=n, sleep_s=0.1))
    wait_until(lambda: len(done_numbers(record)) >= 10, 15, "some jobs to be done")

    proxy.cut()
    time.sleep(CUT_S)  # the outage: nothing to wait for, time has to pass
    assert len(done_numbers(record)) < len(sent), "the cut came too late to test anything"
    proxy.restore()

    def report() -> str:
        done = Counter(n for _e, n, _pid, _id in events(record, "done"))
        duplicates = {n: count for n, count in sorted(done.items()) if count > 1}
        return (
            f"{len(done)} of {len(sent)} jobs done, missing {sorted(set(sent) - set(done))}, "
            f"done more than once (at-least-once after the cut): {duplicates}"
        )

    try:
        wait_until(lambda: done_numbers(record) == set(sent), 40, "every job to be done")
    except AssertionError:
        pytest.fail(report())
    log = worker.log()
    assert "broker_unreachable" in log, f"the cut went unnoticed:\n{log}"
    assert log.count("worker_consuming") >= 2, f"the worker did not resume consuming:\n{log}"
    assert worker.process.poll() is None, "the worker must survive the outage"
    # Only deliveries unacked at the cut (at most the prefetch, 8) may run twice.
    repeated = len(events(record, "done")) - len(sent)
    assert repeated <= PREFETCH, report()
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    wait_until(lambda: rabbit_broker.message_count(queue) == 0, 10, "the queue to be empty")


def _through(
    proxy: TcpProxy, rabbit_url: str, rabbit_broker: RabbitBroker, *, confirm_timeout_s: float
) -> RabbitBroker:
    """A second broker in `rabbit_broker`'s namespace whose publisher goes through `proxy`,
    `Jobs` declared (`rabbit_broker` deletes its queues afterwards)."""
    rabbit_broker.declare(Jobs)
    return RabbitBroker(
        proxy.url(rabbit_url),
        namespace=rabbit_broker.namespace,
        auto_declare=False,
        confirm_timeout_s=confirm_timeout_s,
    )


@pytest.fixture
def proxied_broker(
    rabbit_broker: RabbitBroker, proxy: TcpProxy, rabbit_url: str
) -> Iterator[RabbitBroker]:
    """A second broker in the same namespace whose publisher goes through the proxy; closed
    afterwards."""
    broker = _through(proxy, rabbit_url, rabbit_broker, confirm_timeout_s=15)
    try:
        yield broker
    finally:
        broker.close()


def _queued(broker: RabbitBroker) -> int:
    return broker.message_count(naming.queue_name(broker.namespace, Jobs.queue))


def _drain(broker: RabbitBroker) -> list[bytes]:
    """The bodies of every message taken out of the `Jobs` queue."""
    queue = naming.queue_name(broker.namespace, Jobs.queue)
    return [body for _props, body in take_all(broker.url, queue)]


def test_publisher_reconnects_after_cut_between_publishes(
    rabbit_broker: RabbitBroker, proxied_broker: RabbitBroker, proxy: TcpProxy
) -> None:
    """After its connection was cut and restored, publishing works again with no user action."""
    proxied_broker.send(Jobs, Job(n=1))
    proxy.cut()
    wait_until(lambda: proxy.dropped >= 1, 10, "the publisher to try to reconnect")
    proxy.restore()
    proxied_broker.send(Jobs, Job(n=2))
    proxied_broker.send(Jobs, Job(n=3))
    wait_until(lambda: _queued(rabbit_broker) == 3, 10, "3 messages in the queue")


def test_publish_during_cut_completes_once_restored(
    rabbit_broker: RabbitBroker, proxied_broker: RabbitBroker, proxy: TcpProxy
) -> None:
    """A publish made while the broker is unreachable returns once it is back (within timeout)."""
    proxied_broker.send(Jobs, Job(n=1))
    proxy.cut()
    restorer = threading.Timer(CUT_S, proxy.restore)
    restorer.start()
    started = time.monotonic()
    proxied_broker.send(Jobs, Job(n=2))
    waited_s = time.monotonic() - started
    restorer.join()
    assert waited_s >= CUT_S - 0.5, f"the publish returned after {waited_s:.1f}s, while cut"
    wait_until(lambda: _queued(rabbit_broker) == 2, 10, "2 messages in the queue")


def test_publish_during_cut_times_out_with_publish_error(
    rabbit_broker: RabbitBroker, proxy: TcpProxy, rabbit_url: str
) -> None:
    """A publish not confirmed within confirm_timeout_s raises PublishError saying why."""
    broker = _through(proxy, rabbit_url, rabbit_broker, confirm_timeout_s=1.5)
    try:
        broker.send(Jobs, Job(n=1))
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(PublishError) as raised:
            broker.send(Jobs, Job(n=2))
        waited_s = time.monotonic() - started
        message = str(raised.value)
        assert "no confirm within 1.5s" in message
        assert "unreachable" in message
        assert f"127.0.0.1:{proxy.port}" in message
        assert "guest:guest" not in message
        assert 1.4 <= waited_s < 5, waited_s

        proxy.restore()
        # Its reconnection backoff may exceed this short timeout: wait for it to be back.
        wait_until(lambda: proxy.connections >= 1, 10, "the publisher to reconnect")
        broker.send(Jobs, Job(n=3))
    finally:
        broker.close()
    # Only jobs 1 and 3: the publish that raised is not sent behind the caller's back later
    # (a retry by the caller would make it a duplicate under another message id).
    wait_until(lambda: _queued(rabbit_broker) >= 2, 10, "2 messages in the queue")
    assert sorted(json.loads(body)["n"] for body in _drain(rabbit_broker)) == [1, 3]
