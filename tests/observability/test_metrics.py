"""``/metrics`` on the worker's health port counts exactly what the worker did.

A real ``leveret worker`` handles, retries and dead-letters a known load on the real
RabbitMQ; its ``/metrics``, parsed with prometheus-client's own parser, must show exactly
those counts. With ``--processes 2`` the supervisor's port serves the children's sum, each
child labelled by its slot, and a child SIGKILLed and restarted takes nothing back.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from leveret.actors import actors_in
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.observability.helpers import (
    BROKEN,
    EXPECTED_COUNTED,
    STARTS,
    Samples,
    by_label,
    publish_known_load,
    scrape,
    send_foreign,
    total,
)
from tests.support import WorkerProcess, free_port, wait_health, wait_until

pytestmark = [pytest.mark.rabbitmq]

MODULE = "tests.observed_actors"


@pytest.fixture
def workers(rabbit_broker: RabbitBroker) -> Iterator[list[WorkerProcess]]:
    """Workers a test starts (declared first, so their queues are deleted); killed after."""
    rabbit_broker.declare(*actors_in([MODULE]))
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.signal(signal.SIGTERM)
    for process in started:
        with contextlib.suppress(subprocess.TimeoutExpired):  # killed below
            process.wait(40)
        process.stop()


def _wait_counted(port: int, handled: float, ends: float) -> Samples:
    seen: list[Samples] = []

    def reached() -> bool:
        samples = scrape(port)
        seen[:] = [samples]
        # `relay` too: its handler's count lands after the message it published may already
        # have been handled by `ends`.
        return (
            total(samples, "leveret_messages_handled_total", actor="counted") >= handled
            and total(samples, "leveret_messages_handled_total", actor="relay") >= ends
            and total(samples, "leveret_messages_handled_total", actor="ends") >= ends
        )

    wait_until(reached, 30, "the worker to handle the known load")
    return seen[0]


def _assert_known_counts(samples: Samples, times: int = 1) -> None:
    for what, expected in EXPECTED_COUNTED.items():
        found = total(samples, f"leveret_messages_{what}_total", actor="counted", topic="obs.work")
        assert found == expected * times, f"{what}: {found} != {expected * times}"
    assert (
        total(
            samples,
            "leveret_messages_dead_lettered_total",
            actor="counted",
            reason="retries_exhausted",
        )
        == BROKEN * times
    )
    durations = total(
        samples, "leveret_handler_duration_seconds_count", actor="counted", topic="obs.work"
    )
    assert durations == EXPECTED_COUNTED["handled"] * times
    for actor in ("relay", "ends"):
        assert total(samples, "leveret_messages_handled_total", actor=actor) == STARTS * times
        assert total(samples, "leveret_messages_succeeded_total", actor=actor) == STARTS * times
        assert total(samples, "leveret_messages_failed_total", actor=actor) == 0
    # The worker published one Relayed per Start (ctx.publish); retries are not publishes.
    assert total(samples, "leveret_messages_published_total") == STARTS * times
    assert total(samples, "leveret_publish_confirm_seconds_count") == STARTS * times
    assert total(samples, "leveret_publish_nacks_total") == 0
    assert total(samples, "leveret_publish_returns_total") == 0
    assert total(samples, "leveret_messages_in_flight") == 0


def test_metrics_count_exactly_what_one_worker_did(
    rabbit_broker: RabbitBroker, rabbit_url: str, namespace: str, workers: list[WorkerProcess]
) -> None:
    port = free_port()
    worker = WorkerProcess([MODULE], namespace, args=["--health-port", str(port)])
    workers.append(worker)
    wait_health(port, 200)
    before = scrape(port)
    # Every series is there from the start, at zero.
    assert total(before, "leveret_messages_handled_total", actor="counted", topic="obs.work") == 0
    assert total(before, "leveret_worker_reconnects_total") == 0

    publish_known_load(rabbit_broker)
    # A foreign client's message with a topic nobody handles: a label never comes from it.
    send_foreign(rabbit_url, naming.queue_name(namespace, "counted"), "evil.<script>")
    samples = _wait_counted(port, EXPECTED_COUNTED["handled"] + 1, STARTS)

    _assert_known_counts(samples)
    assert (
        total(
            samples, "leveret_messages_dead_lettered_total", topic="other", reason="unknown_topic"
        )
        == 1
    )
    topics = {labels["topic"] for labels, _ in samples["leveret_messages_handled_total"]}
    assert topics == {"obs.work", "obs.start", "obs.relayed", "other"}
    assert total(samples, "leveret_worker_connected") == 1
    assert total(samples, "leveret_worker_consuming") == 1
    assert {labels["slot"] for labels, _ in samples["leveret_worker_connected"]} == {"0"}
    dlq = naming.dlq_name(namespace, "counted")
    assert rabbit_broker.message_count(dlq) == BROKEN + 1


def test_metrics_off_by_flag_answer_404(namespace: str, workers: list[WorkerProcess]) -> None:
    port = free_port()
    worker = WorkerProcess([MODULE], namespace, args=["--health-port", str(port), "--no-metrics"])
    workers.append(worker)
    wait_health(port, 200)
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert raised.value.code == 404
    raised.value.close()


def _children(process: WorkerProcess) -> dict[int, int]:
    """Live children of a supervisor: pid -> slot, from its JSON log."""
    started: dict[int, int] = {}
    gone: set[int] = set()
    for line in process.log().splitlines():
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "worker_child_ready":
            started[record["pid"]] = record["slot"]
        elif record.get("event") in ("worker_child_died", "worker_child_exited"):
            gone.add(record["pid"])
    return {pid: slot for pid, slot in started.items() if pid not in gone}


@pytest.mark.fault
def test_supervisor_serves_the_sum_of_its_children_and_survives_a_kill(
    rabbit_broker: RabbitBroker, namespace: str, workers: list[WorkerProcess]
) -> None:
    port = free_port()
    supervisor = WorkerProcess(
        [MODULE], namespace, args=["--processes", "2", "--threads", "2", "--health-port", str(port)]
    )
    workers.append(supervisor)
    wait_until(lambda: len(_children(supervisor)) == 2, 40, "two children to consume")
    wait_health(port, 200)

    publish_known_load(rabbit_broker)
    samples = _wait_counted(port, EXPECTED_COUNTED["handled"], STARTS)
    _assert_known_counts(samples)
    # Each child's series carries its slot: one child can still be told apart.
    assert by_label(samples, "leveret_worker_connected", "slot") == {"0": 1.0, "1": 1.0}
    assert by_label(samples, "leveret_worker_consuming", "slot") == {"0": 1.0, "1": 1.0}
    per_slot = by_label(samples, "leveret_messages_handled_total", "slot")
    assert set(per_slot) == {"0", "1"}
    assert sum(per_slot.values()) == EXPECTED_COUNTED["handled"] + 2 * STARTS

    # SIGKILL one child: the supervisor restarts it; its slot's counters go on from where
    # they were (never backwards), and the load published next is added exactly once more.
    victim, slot = next(iter(_children(supervisor).items()))
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: victim not in _children(supervisor) and len(_children(supervisor)) == 2,
        40,
        "the killed child to be replaced",
    )
    after_kill = scrape(port)
    assert by_label(after_kill, "leveret_messages_handled_total", "slot") == per_slot
    wait_until(
        lambda: by_label(scrape(port), "leveret_worker_connected", "slot") == {"0": 1.0, "1": 1.0},
        20,
        "the new child's gauges",
    )

    publish_known_load(rabbit_broker, first=1000)
    samples = _wait_counted(port, 2 * EXPECTED_COUNTED["handled"], 2 * STARTS)
    _assert_known_counts(samples, times=2)
    assert str(slot) in by_label(samples, "leveret_messages_handled_total", "slot")
