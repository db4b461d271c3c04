"""Several hosts share one queue, and losing a whole host loses no message.

Three "hosts" are network namespaces on a private bridge (``10.213.<n>.0/24``, picked free):
two run ``leveret worker`` processes, the third publishes. RabbitMQ listens on loopback only,
so a `TcpProxy` on the bridge's address (the root namespace) forwards to it. Every
namespace, veth and the bridge are deleted afterwards; traffic only flows between those
namespaces and this machine.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from leveret.actors import actors_in
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.faults.helpers import events
from tests.faults.netns import Network, host_process
from tests.proxy import TcpProxy
from tests.sample_actors import Jobs
from tests.support import LoggedProcess, wait_until

pytestmark = [pytest.mark.fault]

JOBS = 800
WORKERS_PER_HOST = 2
THREADS = 2

PUBLISH = """
import sys
from leveret.actors import configure
from leveret.services.broker import Broker
from tests.sample_actors import Job

url, namespace, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Broker(url, namespace=namespace) as broker:
    for first in range(0, count, 100):
        broker.publish_many(Job(n=n, sleep_s=0.03) for n in range(first, min(count, first + 100)))
print("published", count)
"""


def test_two_hosts_share_the_work_and_losing_one_loses_nothing(
    rabbit_broker: RabbitBroker,
    rabbit_url: str,
    network: Network,
    record: str,
    tmp_path: Path,
) -> None:
    """Workers on two hosts each take a fair share; after every process of one host is
    SIGKILLed mid-load, the other host handles the rest: every message done, none lost."""
    rabbit_broker.declare(*actors_in(["tests.sample_actors"]))
    namespace = rabbit_broker.namespace
    started: list[LoggedProcess] = []
    with TcpProxy(listen_host=network.gateway) as proxy:
        url = proxy.url(rabbit_url)
        try:
            by_host: dict[str, list[LoggedProcess]] = {"a": [], "b": []}
            for host in by_host:
                for number in range(WORKERS_PER_HOST):
                    worker = host_process(
                        network.hosts[host],
                        [
                            *("-m", "leveret.services.cli", "worker", "tests.sample_actors"),
                            *("--broker-url", url, "--namespace", namespace, "--queues", "jobs"),
                            *("--threads", str(THREADS), "--log-format", "json"),
                        ],
                        tmp_path / f"worker-{host}{number}.log",
                        {"LEVERET_TEST_RECORD": record},
                    )
                    started.append(worker)
                    by_host[host].append(worker)
            for worker in started:
                worker.wait_consuming(30)
            host_of = {w.pid: host for host, ws in by_host.items() for w in ws}

            publisher = host_process(
                network.hosts["c"],
                ["-c", PUBLISH, url, namespace, str(JOBS)],
                tmp_path / "publisher.log",
                {},
            )
            started.append(publisher)
            assert publisher.process.wait(60) == 0, publisher.log()

            wait_until(lambda: len(events(record, "done")) >= JOBS // 3, 30, "a third done")
            before_kill = Counter(host_of[pid] for _e, _n, pid, _id in events(record, "done"))
            for worker in by_host["a"]:
                os.kill(worker.pid, signal.SIGKILL)
            for worker in by_host["a"]:
                assert worker.process.wait(10) == -signal.SIGKILL
            assert network.pids("a") == [], "every process of host a is gone"

            wait_until(
                lambda: {n for _e, n, _p, _id in events(record, "done")} == set(range(JOBS)),
                45,
                "every job to be done",
            )
        finally:
            for process in started:
                process.stop()
        queue = naming.queue_name(namespace, Jobs.queue)
        wait_until(lambda: rabbit_broker.message_count(queue) == 0, 10, "an empty queue")

    done = events(record, "done")
    per_host = Counter(host_of[pid] for _e, _n, pid, _id in done)
    per_job = Counter(n for _e, n, _p, _id in done)
    duplicates = {n: count for n, count in per_job.items() if count > 1}
    cut_off = {n for _e, n, pid, _id in events(record, "start") if host_of[pid] == "a"} - {
        n for _e, n, pid, _id in done if host_of[pid] == "a"
    }
    print(
        f"\n{JOBS} jobs; done before the kill: {dict(before_kill)}; done in all: "
        f"{dict(per_host)}; started on host a but cut off: {len(cut_off)}; "
        f"handled twice: {len(duplicates)} {sorted(duplicates)[:10]}"
    )
    total_before = sum(before_kill.values())
    for host in ("a", "b"):
        assert before_kill[host] >= total_before // 4, f"host {host} took a fair share"
    assert set(per_job) == set(range(JOBS)), "no message lost"
    assert cut_off <= {n for _e, n, pid, _id in done if host_of[pid] == "b"}
