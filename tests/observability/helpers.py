"""Scraping and reading a worker's /metrics, and publishing the observed actors' messages."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import pika
from prometheus_client.parser import text_string_to_metric_families

from leveret.services import Broker
from tests.observed_actors import Start, Work
from tests.support import ROOT

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics`` on `port`, by sample name, parsed by prometheus-client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (over every slot)."""
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(key) == wanted for key, wanted in labels.items())
    )


def by_label(samples: Samples, name: str, label: str, **labels: str) -> Mapping[str, float]:
    """`name`'s samples summed per value of `label`."""
    sums: dict[str, float] = defaultdict(float)
    for found, value in samples.get(name, []):
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            sums[found.get(label, "")] += value
    return sums


OK, FLAKY, BROKEN, STARTS = 5, 3, 2, 2
"""The known load `publish_known_load` publishes."""

EXPECTED_COUNTED = {
    # Every delivery of a Work: ok once, flaky twice (fails, then succeeds), broken twice.
    "handled": OK + 2 * FLAKY + 2 * BROKEN,
    "succeeded": OK + FLAKY,
    "failed": FLAKY + 2 * BROKEN,
    "retried": FLAKY + BROKEN,
    "dead_lettered": BROKEN,
}


def publish_known_load(broker: Broker, first: int = 0) -> None:
    """`OK` good works, `FLAKY` that fail once, `BROKEN` that always fail, `STARTS` relays."""
    n = first
    for kind, count in (("ok", OK), ("flaky", FLAKY), ("broken", BROKEN)):
        for _ in range(count):
            broker.publish(Work(n=n, kind=kind))
            n += 1
    for _ in range(STARTS):
        broker.publish(Start(n=n))
        n += 1


def send_foreign(url: str, queue: str, topic: str) -> None:
    """A message from another AMQP client straight to `queue`, with any `topic`."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.basic_publish(
            "", queue, b'{"n": 1}', pika.BasicProperties(type=topic, delivery_mode=2)
        )
    finally:
        connection.close()


def status_json(url: str, namespace: str, *options: str) -> dict[str, Any]:
    """``leveret status --json OPTIONS`` in a subprocess (as an operator runs it)."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "leveret", "status", "--json"),
            *("--broker-url", url, "--namespace", namespace, *options),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report
