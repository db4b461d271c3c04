"""A node of a three-node RabbitMQ cluster dies (SIGKILL) while publishers and two workers
run: every message a publisher was told is stored gets handled; none is lost.

Run with the ``cluster`` marker (`scripts/cluster` starts the nodes); the gap in handling
around the kill is measured and printed.
"""

from __future__ import annotations

import itertools
import json
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
import pytest

from leveret.schemas.errors import PublishError
from leveret.services import RabbitBroker
from leveret.services.topology import declarations as topology
from leveret.services.topology import naming
from tests import raw_amqp
from tests.cluster.conftest import Cluster, delete_namespace
from tests.cluster_actors import ClusterJob, ClusterJobs
from tests.support import WorkerProcess, declare_as_leveret_0_1, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.fault, pytest.mark.timeout(300)]


def _records(path: Path, event: str) -> dict[int, float]:
    """n -> the first time `event` was recorded for it."""
    found: dict[int, float] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == event:
            found.setdefault(int(parts[1]), float(parts[4]))
    return found


def _all(path: Path, event: str) -> list[tuple[int, float]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == event:
            rows.append((int(parts[1]), float(parts[4])))
    return rows


@contextmanager
def _workers(cluster: Cluster, namespace: str, record: Path) -> Iterator[list[WorkerProcess]]:
    env = {"LEVERET_TEST_RECORD": str(record)}
    workers = [
        WorkerProcess(
            ["tests.cluster_actors"], namespace, url=cluster.urls, args=["--threads", "4"], env=env
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_consuming(60)
        yield workers
    finally:
        for worker in workers:
            worker.stop_gracefully(30)


class _Publisher(threading.Thread):
    """Sends jobs one at a time (each confirmed), remembering which were confirmed."""

    def __init__(self, broker: RabbitBroker, start: int, count: int, **job: int | bool) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.numbers = range(start, start + count)
        self.job = job
        self.delay_s = int(job.pop("delay_s", 0))
        self.confirmed: set[int] = set()
        self.failed: dict[int, str] = {}
        self.publish_gap_s = 0.0

    def run(self) -> None:
        last = time.monotonic()
        for n in self.numbers:
            try:
                self.broker.send(
                    ClusterJobs,
                    ClusterJob.model_validate({"n": n, **self.job}),
                    delay=self.delay_s,
                    timeout=20,
                )
                self.confirmed.add(n)
            except PublishError as exc:  # not confirmed: it may or may not be stored
                self.failed[n] = str(exc)
            now = time.monotonic()
            self.publish_gap_s = max(self.publish_gap_s, now - last)
            last = now
            time.sleep(0.005)


def _handling_gap_s(record: Path, killed_at: float) -> float:
    """The longest pause between two handled messages after the kill."""
    times = sorted(t for _n, t in _all(record, "done") if t >= killed_at - 1)
    if len(times) < 2:
        return float("nan")
    return max(b - a for a, b in itertools.pairwise(times))


def test_the_node_leading_the_actors_queue_dies_and_nothing_confirmed_is_lost(
    cluster: Cluster, cluster_broker: RabbitBroker, namespace: str, tmp_path: Path
) -> None:
    cluster_broker.declare(ClusterJobs)
    queue = naming.queue_name(namespace, ClusterJobs.queue)
    cluster.wait_members_online(queue, 3)
    record = tmp_path / "record"
    with _workers(cluster, namespace, record):
        publisher = _Publisher(cluster_broker, 0, 1500)
        publisher.start()
        wait_until(lambda: len(_records(record, "done")) >= 200, 60, "handling to get going")
        victim = cluster.leader_of(queue)
        killed_at = time.time()
        cluster.kill(victim)
        publisher.join(240)
        assert not publisher.is_alive()
        wait_until(
            lambda: publisher.confirmed <= set(_records(record, "done")),
            120,
            "every confirmed message to be handled",
        )
        done = _records(record, "done")
        handled_twice = len(_all(record, "done")) - len(done)
        new_leader = cluster.leader_of(queue)
        gap_s = _handling_gap_s(record, killed_at)
        print(
            f"\nleader node {victim} killed: {len(publisher.confirmed)} confirmed, "
            f"{len(publisher.failed)} not confirmed (caller told), {len(done)} handled, "
            f"{handled_twice} handled twice; handling gap {gap_s:.2f} s, longest publish "
            f"{publisher.publish_gap_s:.2f} s; new leader node {new_leader}"
        )
        assert new_leader != victim
        lost = publisher.confirmed - set(done)
        assert not lost, f"confirmed but never handled: {sorted(lost)[:20]}"
        assert set(done) <= set(range(1500))
    cluster.start(victim)
    cluster.wait_members_online(queue, 3, timeout_s=120)


@pytest.mark.xfail(
    reason="the classic delay levels (the default on one node, chosen here explicitly) live "
    "on one node, and RabbitMQ 3.10 confirms, then drops, a delayed message published while "
    "that node is down: on a cluster Leveret uses quorum levels (see the test below)",
    strict=False,
)
def test_classic_delay_levels_lose_what_is_delayed_while_their_node_is_down(
    cluster: Cluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages waiting in classic delay levels, and retries on their way through them,
    when the node holding the levels is killed and started again 5 s later. Kept to show
    the trade-off of the classic levels on a cluster (docs/failure-handling.md)."""
    monkeypatch.setenv("LEVERET_DELAY_QUEUES", "classic")
    broker = RabbitBroker(cluster.urls, namespace=namespace)
    assert broker.transport.delay_queues == "classic"
    victim = 2  # classic queues live where they were declared: the levels on node 2
    on_victim = RabbitBroker(cluster.url_of(victim), namespace=namespace)
    on_victim.declare(ClusterJobs)
    on_victim.close()
    record = tmp_path / "record"
    level_2 = naming.delay_queue(namespace, 2)  # 4 s waits here; a retry of 2 s in level 1
    try:
        with _workers(cluster, namespace, record):
            _delays_through_a_node_loss(
                cluster, broker, namespace, record, level_2, lambda: victim, handled_within_s=120
            )
    finally:
        delete_namespace(cluster, broker, namespace)


def test_quorum_delay_levels_deliver_on_a_cluster(
    cluster: Cluster, cluster_broker: RabbitBroker, namespace: str, tmp_path: Path
) -> None:
    """Given the cluster's nodes, a broker chooses the replicated (quorum) delay levels by
    itself, and they deliver delayed messages and retries; nothing ends unrouted."""
    broker = cluster_broker
    record = tmp_path / "record"
    assert broker.transport.delay_queues == "quorum"
    broker.declare(ClusterJobs)
    with _workers(cluster, namespace, record):
        delayed = _Publisher(broker, 0, 50, delay_s=2)
        retried = _Publisher(broker, 1000, 50, retry_in_s=1)
        delayed.run()
        retried.run()
        confirmed = delayed.confirmed | retried.confirmed
        assert len(confirmed) == 100
        wait_until(lambda: confirmed <= set(_records(record, "done")), 60, "all handled")
    assert broker.message_count(naming.delay_unrouted(namespace)) == 0


def test_quorum_delay_levels_keep_delayed_and_retried_messages_when_a_levels_leader_dies(
    cluster: Cluster, cluster_broker: RabbitBroker, namespace: str, tmp_path: Path
) -> None:
    """The replicated levels (the default on a cluster) while messages wait in them and
    retries pass through them: the node leading the level the delayed messages wait in (4 s,
    level 2) is killed and started again 5 s later; every confirmed message, delayed or
    retried, is handled, and none ends unrouted."""
    broker = cluster_broker
    record = tmp_path / "record"
    level_2 = naming.delay_queue(namespace, 2, "quorum")
    assert broker.transport.delay_queues == "quorum"
    broker.declare(ClusterJobs)
    with _workers(cluster, namespace, record):
        _delays_through_a_node_loss(
            cluster,
            broker,
            namespace,
            record,
            level_2,
            lambda: cluster.leader_of(level_2),
            handled_within_s=150,
        )
    assert broker.message_count(naming.delay_unrouted(namespace)) == 0


def _delays_through_a_node_loss(
    cluster: Cluster,
    broker: RabbitBroker,
    namespace: str,
    record: Path,
    level: str,
    victim_of: Callable[[], int],
    handled_within_s: float,
) -> None:
    """300 jobs delayed 4 s (they wait in `level`) and 300 retried after 2 s; once 50 wait,
    the node `victim_of` names is killed and started again 5 s later. Every confirmed job
    must then be handled within `handled_within_s`; the handling gap is printed."""
    delayed = _Publisher(broker, 0, 300, delay_s=4)
    retried = _Publisher(broker, 1000, 300, retry_in_s=2)
    delayed.start()
    retried.start()
    wait_until(lambda: broker.message_count(level) >= 50, 60, "delayed messages waiting")
    victim = victim_of()
    killed_at = time.time()
    cluster.kill(victim)
    time.sleep(5)
    cluster.start(victim)
    delayed.join(240)
    retried.join(240)
    confirmed = delayed.confirmed | retried.confirmed
    _wait_all_handled(cluster, namespace, record, confirmed, handled_within_s)
    print(
        f"\nnode {victim} (holding {level}) killed, started 5 s later: "
        f"{len(delayed.confirmed)} delayed and {len(retried.confirmed)} retried confirmed, "
        f"all handled; {len(delayed.failed) + len(retried.failed)} not confirmed; handling "
        f"gap {_handling_gap_s(record, killed_at):.2f} s"
    )


def _wait_all_handled(
    cluster: Cluster, namespace: str, record: Path, confirmed: set[int], timeout_s: float
) -> None:
    """Wait until every confirmed job is handled; else say which not, and what waits where."""
    try:
        wait_until(
            lambda: confirmed <= set(_records(record, "done")),
            timeout_s,
            "every confirmed message, delayed or retried, to be handled",
        )
    except AssertionError:
        missing = sorted(confirmed - set(_records(record, "done")))
        waiting = {
            name: row.get("messages")
            for name, row in cluster.queues(f"{namespace}.").items()
            if row.get("messages")
        }
        raise AssertionError(
            f"{len(missing)} confirmed messages not handled ({missing[:10]}…); "
            f"messages waiting: {waiting}"
        ) from None


class _Rejecter(threading.Thread):
    """A plain AMQP consumer on one node that rejects every delivery of a queue without
    requeueing it, so that the broker dead-letters it, as it does with a message past its
    delivery limit or one a worker cannot read."""

    def __init__(self, url: str, queue: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.queue = queue
        self.rejected = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = connection.channel()
            channel.basic_qos(prefetch_count=20)

            def reject(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
                ch.basic_reject(method.delivery_tag, requeue=False)
                self.rejected += 1

            channel.basic_consume(self.queue, reject)
            while not self.stop.is_set():
                connection.process_data_events(time_limit=0.2)
            connection.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.parametrize("declared_by", ["this_leveret", "leveret_0_1_with_the_policy"])
def test_dead_letters_reach_the_dlq_when_its_leader_dies(
    cluster: Cluster,
    cluster_broker: RabbitBroker,
    namespace: str,
    tmp_path: Path,
    declared_by: str,
) -> None:
    """Messages go to the actor's ``.dlq`` both ways while the node leading the ``.dlq`` is
    killed (and started again 5 s later): published there by the workers (a handler's
    `Reject`) and dead-lettered by the broker (a plain consumer rejects them, as the broker
    does past a delivery limit). The actor's queue leads on another node, which goes on
    dead-lettering meanwhile. Every confirmed message must end in the ``.dlq``.

    The actor's queue is declared by this Leveret (at-least-once dead-lettering), or by
    Leveret 0.1 (without it) and given the policy that the worker's warning prints."""
    queue = naming.queue_name(namespace, ClusterJobs.queue)
    dlq = naming.dlq_name(namespace, ClusterJobs.queue)
    victim, source = 2, 3
    # A quorum queue's leader starts on the node its declaring client is connected to: the
    # .dlq on the victim, then the actor's queue (and the rest) on another node.
    steps = {s.name: s for s in topology.actor_steps(namespace, ClusterJobs) if s.kind == "queue"}
    with raw_amqp.client(cluster.url_of(victim)) as raw:
        raw.channel.queue_declare(dlq, durable=True, arguments=steps[dlq].arguments)
    if declared_by == "leveret_0_1_with_the_policy":
        declare_as_leveret_0_1(cluster.url_of(source), namespace, ClusterJobs)
        command = shlex.split(topology.at_least_once_policy_command(queue))
        cluster.ctl(1, *command[1:])  # what follows "rabbitmqctl"
    on_source = RabbitBroker(cluster.url_of(source), namespace=namespace)
    on_source.declare(ClusterJobs)
    on_source.close()
    cluster.wait_members_online(dlq, 3)
    cluster.wait_members_online(queue, 3)
    assert (cluster.leader_of(dlq), cluster.leader_of(queue)) == (victim, source)
    if declared_by == "leveret_0_1_with_the_policy":
        assert cluster.queues(queue)[queue]["policy"] == f"leveret-{queue}"
    record = tmp_path / "record"
    rejecter = _Rejecter(cluster.url_of(source), queue)
    rejecter.start()
    try:
        with _workers(cluster, namespace, record):
            publisher = _Publisher(cluster_broker, 0, 1500, reject=True)
            publisher.start()
            wait_until(lambda: cluster_broker.message_count(dlq) >= 200, 60, "dead letters")
            cluster.kill(victim)
            time.sleep(5)
            cluster.start(victim)
            publisher.join(240)
            assert not publisher.is_alive()
            wait_until(
                lambda: cluster_broker.message_count(queue) == 0,
                120,
                "the actor's queue to be empty",
            )
    finally:
        rejecter.stop.set()
        rejecter.join(30)
        if declared_by == "leveret_0_1_with_the_policy":
            cluster.ctl(1, "clear_policy", f"leveret-{queue}")
    assert rejecter.error is None, rejecter.error
    letters = cluster_broker.dead_letters(ClusterJobs, limit=100_000)
    by_broker = [d for d in letters if "x-death" in d.headers]
    numbers = [json.loads(d.body)["n"] for d in letters]
    lost = publisher.confirmed - set(numbers)
    print(
        f"\n.dlq leader node {victim} killed, started 5 s later: {len(publisher.confirmed)} "
        f"confirmed, {len(publisher.failed)} not confirmed; {len(letters)} dead letters "
        f"({len(by_broker)} dead-lettered by the broker, {rejecter.rejected} rejected; "
        f"{len(numbers) - len(set(numbers))} twice)"
    )
    assert 0 < len(by_broker) < len(letters)  # both ways were taken
    assert not lost, f"{len(lost)} confirmed but not in the .dlq: {sorted(lost)[:20]}"
