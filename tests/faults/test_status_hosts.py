"""``leveret status`` across servers: workers on two hosts, one SIGKILLed, shows stale.

Two "hosts" (network namespaces on a private bridge, see `tests.faults.netns`) each run a
``leveret worker`` that reaches RabbitMQ through a `TcpProxy` on the bridge and sends a
heartbeat every second. Status, run from this machine, must list both, told apart by the
address of their connection; once host a's worker is SIGKILLed it must show as stale within
three heartbeat intervals (plus the time to look), and warn about it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from leveret.actors import actors_in
from leveret.services import RabbitBroker
from tests.faults.netns import Network, host_process
from tests.observability.helpers import status_json
from tests.proxy import TcpProxy
from tests.support import LoggedProcess, wait_until

pytestmark = [pytest.mark.fault]

MODULE = "tests.observed_actors"
INTERVAL_S = 1.0
STALE_WITHIN_S = 3 * INTERVAL_S + 4  # three intervals, plus a look's own time and a margin


def _status(url: str, namespace: str) -> dict[str, Any]:
    return status_json(url, namespace, "--no-management", "--wait", "2", "--interval", "0.5")


def test_status_shows_both_hosts_and_a_killed_worker_as_stale(
    rabbit_broker: RabbitBroker,
    rabbit_url: str,
    network: Network,
    tmp_path: Path,
) -> None:
    rabbit_broker.declare(*actors_in([MODULE]))
    namespace = rabbit_broker.namespace
    started: list[LoggedProcess] = []
    with TcpProxy(listen_host=network.gateway) as proxy:
        url = proxy.url(rabbit_url)
        try:
            by_host = {}
            for host in ("a", "b"):
                worker = host_process(
                    network.hosts[host],
                    [
                        *("-m", "leveret.services.cli", "worker", MODULE),
                        *("--broker-url", url, "--namespace", namespace, "--log-format", "json"),
                        *("--heartbeat-interval", str(INTERVAL_S), "--threads", "2"),
                    ],
                    tmp_path / f"worker-{host}.log",
                    {},
                )
                started.append(worker)
                by_host[host] = worker
            for worker in started:
                worker.wait_consuming(30)
            addresses = {host: network.subnet + f".{2 + i}" for i, host in enumerate("ab")}

            def live() -> dict[str, dict[str, Any]]:
                report = _status(rabbit_url, namespace)
                return {
                    (w["address"] or "").rsplit(":", 1)[0]: w
                    for w in report["workers"]
                    if not w["stale"]
                }

            wait_until(lambda: set(live()) == set(addresses.values()), 20, "both hosts live")
            seen = live()
            assert {seen[addresses[h]]["pid"] for h in "ab"} == {
                by_host["a"].pid,
                by_host["b"].pid,
            }

            os.kill(by_host["a"].pid, signal.SIGKILL)
            assert by_host["a"].process.wait(10) == -signal.SIGKILL
            killed_at = time.monotonic()
            reports: list[dict[str, Any]] = []

            def a_is_stale() -> bool:
                report = _status(rabbit_url, namespace)
                reports[:] = [report]
                return any(w["stale"] and w["pid"] == by_host["a"].pid for w in report["workers"])

            wait_until(a_is_stale, STALE_WITHIN_S, "host a's worker to show as stale")
            took_s = time.monotonic() - killed_at
            report = reports[0]
            workers = {w["pid"]: w for w in report["workers"]}
            assert workers[by_host["b"].pid]["stale"] is False
            assert workers[by_host["a"].pid]["address"].startswith(addresses["a"] + ":")
            stale = [w for w in report["warnings"] if w["kind"] == "worker_stale"]
            assert [w["subject"] for w in stale] == [workers[by_host["a"].pid]["id"]]
            print(f"\nhost a's worker showed as stale {took_s:.1f} s after SIGKILL")
        finally:
            for process in started:
                process.stop()
