"""Several hosts share one queue, and losing a whole host loses no message.

Three "hosts" are network namespaces on a private bridge (``10.213.<n>.0/24``, picked free):
two run ``leveret worker`` processes, the third publishes. RabbitMQ listens on loopback only,
so a `TcpProxy` on the bridge's address (the root namespace) forwards to it. Every
namespace, veth and the bridge are deleted afterwards; traffic only flows between those
namespaces and this machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from leveret.actors import actors_in
from leveret.services import RabbitBroker, naming
from tests.faults.helpers import events
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


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


@dataclass
class Network:
    """A bridge in the root namespace and one namespace ("host") per name, each on a veth."""

    tag: str
    subnet: str  # "10.213.<n>"
    hosts: dict[str, str] = field(default_factory=dict)  # namespace -> address
    made_links: list[str] = field(default_factory=list)
    made_namespaces: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"lvbr{self.tag}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge."""
        return f"{self.subnet}.1"

    def create(self, names: list[str]) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made_links.append(self.bridge)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, name in enumerate(names):
            netns = f"lv{self.tag}{name}"
            outer, inner = f"lv{self.tag}{name}o", f"lv{self.tag}{name}i"
            _ip("netns", "add", netns)
            self.made_namespaces.append(netns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self.made_links.append(outer)  # deleting one end deletes its peer
            _ip("link", "set", inner, "netns", netns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            address = f"{self.subnet}.{index + 2}"
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", netns, "link", "set", inner, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            self.hosts[name] = netns

    def delete(self) -> None:
        for link in reversed(self.made_links):
            _ip("link", "del", link, check=False)
        for netns in reversed(self.made_namespaces):
            _ip("netns", "del", netns, check=False)

    def pids(self, name: str) -> list[int]:
        """Processes running in host `name` now."""
        out = _ip("netns", "pids", self.hosts[name], check=False).stdout
        return [int(pid) for pid in out.split()]


def _free_subnet() -> str:
    used = _ip("-4", "addr").stdout
    for third in range(os.getpid() % 200 + 20, 255):
        subnet = f"10.213.{third}"
        if f"inet {subnet}." not in used:
            return subnet
    pytest.skip("no free 10.213.x.0/24 subnet")


@pytest.fixture
def network() -> Iterator[Network]:
    """Hosts a, b (workers) and c (publisher); skipped only when namespaces cannot be made."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    net = Network(tag=str(os.getpid() % 100_000), subnet=_free_subnet())
    probe = _ip("netns", "add", f"lv{net.tag}probe", check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces: {probe.stderr.strip()}")
    _ip("netns", "del", f"lv{net.tag}probe", check=False)
    try:
        net.create(["a", "b", "c"])
        yield net
    finally:
        net.delete()
    leftover = [n for n in _ip("netns", "list").stdout.split() if n.startswith(f"lv{net.tag}")]
    assert not leftover, f"namespaces left behind: {leftover}"


def host_process(netns: str, args: list[str], log_path: Path, env: dict[str, str]) -> LoggedProcess:
    """A Python process started in a host's namespace (`ip netns exec` execs it, so the pid
    is Python's own); killed by pid at teardown."""
    return LoggedProcess(["ip", "netns", "exec", netns, sys.executable, *args], log_path, env)


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
    with TcpProxy(("127.0.0.1", 5672), listen_host=network.gateway) as proxy:
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
