"""The three-node cluster of `scripts/cluster`, for the tests marked ``cluster``.

The cluster is started once for the session (unless it already runs, e.g. started by hand,
then it is left running) and stopped at the end. Nodes are killed by the pid of their
Erlang VM, which `scripts/cluster` started: never anything else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from leveret.services import RabbitBroker
from tests.support import ROOT, wait_until

SCRIPT = ROOT / "scripts" / "cluster"
NODES = (1, 2, 3)


def _run(*args: str, timeout_s: float = 180) -> str:
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
    )
    if result.returncode != 0:
        raise AssertionError(f"scripts/cluster {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


@dataclass
class Cluster:
    """The running cluster: its URLs, and its nodes to kill and start again."""

    urls: str

    def url_of(self, node: int) -> str:
        """The AMQP URL of node `node` alone."""
        return self.urls.split(",")[node - 1]

    def node_of(self, node_name: str) -> int:
        """The number (1-3) of a node by its Erlang name (``lv2@localhost``)."""
        return int(node_name.split("@", 1)[0].removeprefix("lv"))

    def running(self, node: int) -> bool:
        return (
            subprocess.run(
                [str(SCRIPT), "ctl", str(node), "-q", "status"], capture_output=True, timeout=60
            ).returncode
            == 0
        )

    def kill(self, node: int) -> None:
        """SIGKILL the node's Erlang VM (a crash, not a shutdown)."""
        pid = int(_run("pid", str(node)).strip())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 10, f"node {node} to die")

    def ctl(self, node: int, *args: str) -> str:
        """Run ``rabbitmqctl ARGS`` against node `node`; its output."""
        return _run("ctl", str(node), *args)

    def start(self, node: int) -> None:
        """Start a node again (it rejoins the cluster with its data)."""
        _run("start-node", str(node))

    def queues(self, prefix: str) -> dict[str, dict[str, object]]:
        """Each queue whose name starts with `prefix`: its leader, members and online members
        (as a running node sees them)."""
        live = next(node for node in NODES if self.running(node))
        out = _run(
            "ctl",
            str(live),
            "-q",
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "online",
            "messages",
            "policy",
            "--formatter",
            "json",
        )
        return {row["name"]: row for row in json.loads(out) if row["name"].startswith(prefix)}

    def leader_of(self, queue: str) -> int:
        leader = self.queues(queue)[queue]["leader"]
        assert isinstance(leader, str), leader
        return self.node_of(leader)

    def wait_members_online(self, queue: str, count: int, timeout_s: float = 60) -> None:
        def online() -> bool:
            row = self.queues(queue).get(queue, {})
            return len(row.get("online") or []) == count  # type: ignore[arg-type]

        wait_until(online, timeout_s, f"{queue} to have {count} members online")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    started_here = (
        subprocess.run(
            [str(SCRIPT), "status"], capture_output=True, timeout=120, cwd=ROOT
        ).returncode
        != 0
    )
    if started_here:
        _run("start", timeout_s=300)
    found = Cluster(_run("urls").strip())
    try:
        yield found
    finally:
        for node in NODES:  # a test that failed half-way may have left one down
            if not found.running(node):
                _run("start-node", str(node))
        if started_here:
            _run("stop")


@pytest.fixture
def cluster_broker(
    cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RabbitBroker]:
    """A broker on all three nodes, in a fresh namespace, with a cluster's default delay
    levels (quorum: `LEVERET_DELAY_QUEUES` unset); everything it declared deleted."""
    monkeypatch.delenv("LEVERET_DELAY_QUEUES", raising=False)
    broker = RabbitBroker(cluster.urls, namespace=namespace)
    try:
        yield broker
    finally:
        delete_namespace(cluster, broker, namespace)


def delete_namespace(cluster: Cluster, broker: RabbitBroker, namespace: str) -> None:
    """Close `broker` and delete every queue and exchange of `namespace`, every node up."""
    broker.close()
    for node in NODES:  # every node back first: a queue of a dead node cannot go
        if not cluster.running(node):
            cluster.start(node)
    with broker.admin() as channel:
        for name in cluster.queues(f"{namespace}."):
            channel.queue_delete(name)
    broker.delete_namespace_exchanges()
