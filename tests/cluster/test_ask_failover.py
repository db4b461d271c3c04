"""Asks on a three-node cluster whose node carrying the asking connection dies (SIGKILL):
the ask in flight fails at once, and the next asks go through another node."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from leveret.schemas.errors import AskError, AskInterrupted, BrokerUnavailable
from leveret.services import RabbitBroker
from tests.ask_actors import Answer, Oracle, Question
from tests.cluster.conftest import NODES, Cluster
from tests.support import WorkerProcess, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.fault, pytest.mark.timeout(300)]


def _asking_node(cluster: Cluster) -> int:
    """The node this process's asking connection is on: its connection (by name) is to
    that node's port."""
    live = next(node for node in NODES if cluster.running(node))
    rows = json.loads(
        cluster.ctl(
            live, "-q", "list_connections", "port", "client_properties", "--formatter", "json"
        )
    )
    mine = f":{os.getpid()}"
    for row in rows:
        text = json.dumps(row.get("client_properties"))
        if "leveret asker" in text and mine in text:
            ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in cluster.urls.split(",")]
            return ports.index(int(row["port"])) + 1  # the node listening there
    raise AssertionError(f"no asking connection of this process among {len(rows)}")


def test_asks_fail_over_when_the_asking_connections_node_dies(
    cluster: Cluster, cluster_broker: RabbitBroker, namespace: str
) -> None:
    cluster_broker.declare(Oracle)
    worker = WorkerProcess(["tests.ask_actors"], namespace, url=cluster.urls)
    try:
        worker.wait_consuming(60)
        assert cluster_broker.ask(Oracle, Question(n=1), timeout=30).n == 1
        node = _asking_node(cluster)
        results: list[Answer | BaseException] = []

        def ask_slowly() -> None:
            try:
                results.append(cluster_broker.ask(Oracle, Question(n=2, sleep_s=5), timeout=60))
            except BaseException as exc:  # kept for the assertions
                results.append(exc)

        in_flight = threading.Thread(target=ask_slowly, daemon=True)
        in_flight.start()
        time.sleep(1.5)  # the request is handled meanwhile
        killed_at = time.monotonic()
        cluster.kill(node)
        in_flight.join(30)
        assert time.monotonic() - killed_at < 30
        assert [type(result) for result in results] == [AskInterrupted], results
        answer: Answer | None = None
        deadline = time.monotonic() + 90
        while answer is None:
            try:
                answer = cluster_broker.ask(Oracle, Question(n=3), timeout=10)
            except (AskError, BrokerUnavailable):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert answer.n == 3
        wait_until(lambda: _asking_node(cluster) != node, 10, "the asking connection moved")
    finally:
        worker.stop_gracefully()
