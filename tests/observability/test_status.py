"""``leveret status``: workers from heartbeats, queue figures, warnings; hostile heartbeats.

Against the real RabbitMQ: a worker runs one of three actors with a heartbeat every second;
a message waits in a queue nobody consumes; failing messages fill a ``.dlq``. Status must
show the worker, the queues (from the management API, and from AMQP alone), and warn about
the queue without consumer and the growing ``.dlq``. Anything else published on the
heartbeats route is ignored and never breaks the table.
"""

from __future__ import annotations

import json
import math
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from leveret.actors import actors_in
from leveret.services import RabbitBroker
from leveret.services.cli import main
from leveret.services.cli.status import _CLEAR
from leveret.services.observability.redaction import printable
from leveret.services.operations.status import (
    CLOCK_TOLERANCE_S,
    Snapshot,
    StatusReader,
    parse_workers,
)
from leveret.services.operations.status_table import render
from leveret.services.topology import naming
from tests.observability.helpers import status_json
from tests.observed_actors import Counted, Relayed, Work
from tests.support import RABBITMQCTL, ROOT, WorkerProcess, declare_as_leveret_0_1, wait_until

MODULE = "tests.observed_actors"


def status(url: str, namespace: str, *extra: str) -> dict[str, Any]:
    """``leveret status MODULE --json`` as an operator runs it."""
    return status_json(url, namespace, MODULE, "--wait", "2", *extra)


@pytest.fixture
def worker(rabbit_broker: RabbitBroker, namespace: str) -> Iterator[WorkerProcess]:
    """A worker running only `counted`, one heartbeat a second."""
    rabbit_broker.declare(*actors_in([MODULE]))
    process = WorkerProcess(
        [MODULE], namespace, args=["--queues", "counted", "--heartbeat-interval", "1"]
    )
    try:
        process.wait_consuming()
        yield process
    finally:
        process.stop_gracefully()


@pytest.mark.rabbitmq
def test_status_shows_workers_queues_and_warnings(
    rabbit_broker: RabbitBroker, rabbit_url: str, namespace: str, worker: WorkerProcess
) -> None:
    rabbit_broker.publish(Relayed(n=1))  # to `ends`, which no worker consumes
    for n in range(3):
        rabbit_broker.publish(Work(n=n))

    report = status(rabbit_url, namespace)
    assert report["source"] == "management", report["source_note"]
    [row] = report["workers"]
    assert row["pid"] == worker.pid
    assert row["queues"] == [naming.queue_name(namespace, "counted")]
    assert row["stale"] is False
    assert row["consuming"] is True
    queues = {q["actor"]: q for q in report["queues"]}
    assert set(queues) == {"counted", "relay", "ends"}
    assert queues["ends"]["figures"]["ready"] == 1
    assert queues["ends"]["figures"]["consumers"] == 0
    assert queues["counted"]["figures"]["consumers"] == 1
    assert queues["counted"]["figures"]["unacked"] is not None  # the management API's
    kinds = {(w["kind"], w["subject"]) for w in report["warnings"]}
    assert ("queue_without_consumer", naming.queue_name(namespace, "ends")) in kinds
    assert not any(kind == "queue_without_consumer" and "counted" in s for kind, s in kinds)

    # AMQP alone: the same queues and warnings, no unacked counts or rates, and it says so.
    amqp = status(rabbit_url, namespace, "--no-management")
    assert amqp["source"] == "amqp"
    queues = {q["actor"]: q for q in amqp["queues"]}
    assert queues["ends"]["figures"] == {
        "ready": 1,
        "consumers": 0,
        "unacked": None,
        "incoming_per_s": None,
        "delivered_per_s": None,
        "dead_letters_at_most_once": None,
    }
    assert [w["pid"] for w in amqp["workers"]] == [worker.pid]
    assert "queue_without_consumer" in {w["kind"] for w in amqp["warnings"]}

    # Dead letters growing between two looks (what --watch compares).
    reader = StatusReader(rabbit_broker, actors=["counted", "relay", "ends"], management_url="")
    first = reader.take()
    assert "dead_letters_growing" not in {w.kind for w in first.warnings}
    rabbit_broker.publish(Work(n=99, kind="broken"))
    dlq = naming.dlq_name(namespace, "counted")
    wait_until(lambda: rabbit_broker.message_count(dlq) == 1, 20, "a dead letter")
    second = reader.take()
    growing = [w for w in second.warnings if w.kind == "dead_letters_growing"]
    assert [w.subject for w in growing] == [dlq]
    text = render(second)
    assert "dead letters of counted are growing" in text
    assert f"queue {naming.queue_name(namespace, 'ends')} holds 1 messages" in text


@pytest.mark.rabbitmq
def test_status_warns_of_a_leveret_0_1_queue_until_the_policy_it_prints_is_set(
    rabbit_broker: RabbitBroker, rabbit_url: str, namespace: str
) -> None:
    """An actor queue declared by Leveret 0.1 (no at-least-once dead-lettering) is pointed
    out, with the command that fixes it; once that command has run, it no longer is. The
    queues this Leveret declares are never pointed out."""
    counted = declare_as_leveret_0_1(rabbit_url, namespace, Counted)
    rabbit_broker.declare(*actors_in([MODULE]))

    def at_most_once() -> dict[str, str]:
        report = status(rabbit_url, namespace)
        assert report["source"] == "management", report["source_note"]
        return {
            w["subject"]: w["message"]
            for w in report["warnings"]
            if w["kind"] == "dead_letters_at_most_once"
        }

    assert set(at_most_once()) == {counted}
    command = shlex.split(at_most_once()[counted].split("Fix: ", 1)[1])
    assert command[0] == "rabbitmqctl"
    subprocess.run([*RABBITMQCTL, *command[1:]], check=True, capture_output=True, timeout=60)
    try:
        wait_until(lambda: not at_most_once(), 30, "the warning to go once the policy is set")
    finally:
        subprocess.run(
            [*RABBITMQCTL, "clear_policy", f"leveret-{counted}"], capture_output=True, timeout=60
        )


@pytest.mark.rabbitmq
def test_hostile_heartbeats_are_ignored(
    rabbit_broker: RabbitBroker, rabbit_url: str, namespace: str, worker: WorkerProcess
) -> None:
    exchange = naming.heartbeats_exchange(namespace)
    status(rabbit_url, namespace)  # the listener exists from now on
    good = {
        "id": "x" * 10,
        "host": "evil\x1b[2J<script>",
        "pid": 1,
        "sent_at": 4102444800.0,  # 2100: never stale
        "queues": [],
    }
    bodies = [
        b"",
        b"not json",
        b"[1, 2, 3]",
        b"{" * 10_000,
        json.dumps({"id": "no sent_at"}).encode(),
        json.dumps({"id": "", "sent_at": 1}).encode(),
        json.dumps({"id": "nan", "sent_at": "NaN"}).encode(),
        json.dumps({"id": "n", "sent_at": 1, "interval_s": -5}).encode(),
        json.dumps({"id": "big", "sent_at": 1, "pid": 10**400}).encode(),
        json.dumps(good).encode(),
    ]
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    try:
        channel = connection.channel()
        for body in bodies:
            channel.basic_publish(exchange, "", body)
    finally:
        connection.close()
    wait_until(
        lambda: status(rabbit_url, namespace)["ignored_heartbeats"] >= len(bodies) - 1,
        15,
        "the hostile heartbeats to be read",
    )
    report = status(rabbit_url, namespace)
    hosts = {w["host"] for w in report["workers"]}
    assert "evil\\x1b[2J<script>" in hosts
    assert len(report["workers"]) == 2
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["status", "--broker-url", rabbit_url, "--namespace", namespace, "--no-management"],
    )
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output  # control characters from the wire never reach a terminal
    assert "evil\\x1b[2J<script>" in result.output


def _publish_heartbeats(url: str, namespace: str, *beats: dict[str, Any] | bytes) -> None:
    """Publish `beats` to the namespace's heartbeats exchange as any client can."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()  # routed to the listener once this returns
        for beat in beats:
            body = beat if isinstance(beat, bytes) else json.dumps(beat).encode()
            channel.basic_publish(naming.heartbeats_exchange(namespace), "", body)
    finally:
        connection.close()


def _forged(id: str, **fields: Any) -> dict[str, Any]:
    """A heartbeat that validates, sent now."""
    return {"id": id, "host": "forged", "pid": 4242, "sent_at": time.time(), **fields}


def _table(url: str, namespace: str, *extra: str) -> str:
    result = CliRunner().invoke(
        main, ["status", "--broker-url", url, "--namespace", namespace, "--wait", "0", *extra]
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.rabbitmq
def test_a_password_in_a_heartbeats_last_error_is_never_shown(
    rabbit_broker: RabbitBroker, rabbit_url: str, namespace: str
) -> None:
    """A heartbeat's last error is redacted where status shows it (the table, --json), even
    when whoever published it did not redact it."""
    status(rabbit_url, namespace, "--no-management")  # the listener exists from now on
    error = "OperationalError: cannot reach postgresql://app:S3cret word@db/shop"
    _publish_heartbeats(rabbit_url, namespace, _forged("leaky", last_error=error))
    wait_until(
        lambda: status(rabbit_url, namespace, "--no-management")["workers"], 15, "the heartbeat"
    )
    [row] = status(rabbit_url, namespace, "--no-management")["workers"]
    assert row["last_error"] == "OperationalError: cannot reach postgresql://app:***@db/shop"
    text = _table(rabbit_url, namespace, "--no-management")
    assert "postgresql://app:***@db/shop" in text
    assert "S3cret" not in text


@pytest.mark.rabbitmq
def test_forged_heartbeats_listing_thousands_of_queues_cannot_stall_status(
    rabbit_broker: RabbitBroker, rabbit_url: str, namespace: str, worker: WorkerProcess
) -> None:
    """3,000 queue names that do not exist (sorting before the real ones), names of another
    namespace and names no queue can have, in two forged heartbeats: status answers within
    seconds (it took 10-12 s), with and without the management API and as the dashboard
    reads it, shows the modules' queues and no forged one, and says what it left out."""
    status(rabbit_url, namespace)  # the listener exists from now on
    fake = [f"{namespace}.a{n}" for n in range(3000)]
    odd = [f"other.q{n}" for n in range(10)] + [f"{namespace}.bad name {n}" for n in range(10)]
    _publish_heartbeats(
        rabbit_url,
        namespace,
        *(_forged(f"forger{i}", queues=[*odd, *fake[i * 1500 : (i + 1) * 1500]]) for i in (0, 1)),
    )
    for extra, left_out in (
        # 500 names of each heartbeat taken (the rest past the limit), none on the broker
        ((), {"not_actor_queues": 20, "past_limits": 2000, "not_on_broker": 1000}),
        # ... of which 200 asked over AMQP (the rest past the limit), none on the broker
        (("--no-management",), {"not_actor_queues": 20, "past_limits": 2800, "not_on_broker": 200}),
    ):
        started = time.monotonic()
        report = status(rabbit_url, namespace, *extra)
        took_s = time.monotonic() - started
        print(f"\nleveret status {' '.join(extra)}: {took_s:.1f} s")
        assert took_s < 8, took_s
        assert {q["actor"] for q in report["queues"]} == {"counted", "relay", "ends"}
        assert report["queues_left_out"] == left_out
        [warning] = [w for w in report["warnings"] if w["kind"] == "queues_left_out"]
        assert warning["message"].startswith("3020 queue names from heartbeats not shown")
        forged = [w for w in report["workers"] if w["id"].startswith("forger")]
        assert len(forged) == 2
        for row in forged:
            assert len(row["queues"]) == 500
            assert all(queue.startswith(namespace + ".a") for queue in row["queues"])
    # As the dashboard reads it (the management API's figures trusted, no sampling).
    reader = StatusReader(
        rabbit_broker,
        actors=["counted", "relay", "ends"],
        first_wait_s=0,
        sample_s=0,
        amqp_figures=False,
    )
    started = time.monotonic()
    snapshot = reader.take()
    took_s = time.monotonic() - started
    print(f"the dashboard's snapshot: {took_s:.2f} s")
    assert took_s < 3, took_s
    assert {q.actor for q in snapshot.queues} == {"counted", "relay", "ends"}


HOSTILE = "\x1b]0;pwned\x07\x1b[2J\u202e\u2066\x9b31m\u200b\x85\u3164"
"""An OSC title sequence, a screen clear, a right-to-left override and isolate, a C1 CSI,
invisible characters."""


def _clean(text: str) -> bool:
    """Nothing in `text` acts on a terminal: no control or invisible character but \\n."""
    return printable(text, keep_newlines=True).replace("\t", "") == text.replace("\t", "")


@pytest.mark.rabbitmq
def test_text_from_heartbeats_reaches_no_terminal_and_no_file_raw(
    rabbit_broker: RabbitBroker, rabbit_url: str, namespace: str, tmp_path: Path
) -> None:
    """Host, address, version, actors, id and last error of a heartbeat, and the warnings
    quoting them, are shown with every control or invisible character escaped: in the
    table (to a file too), in --json, and in --watch."""
    status(rabbit_url, namespace, "--no-management")  # the listener exists from now on
    beat = _forged(
        "id" + HOSTILE,
        host="host" + HOSTILE,
        address="10.0.0.1:1" + HOSTILE,
        version="1" + HOSTILE,
        actors=["a" + HOSTILE],
        last_error="boom" + HOSTILE,
        connected=False,  # a warning quoting host and address
    )
    _publish_heartbeats(rabbit_url, namespace, beat)
    wait_until(
        lambda: status(rabbit_url, namespace, "--no-management")["workers"], 15, "the heartbeat"
    )
    report = status(rabbit_url, namespace, "--no-management")
    [row] = report["workers"]
    assert row["host"] == "host" + printable(HOSTILE)
    assert row["last_error"] == "boom" + printable(HOSTILE)
    assert all(_clean(w["message"]) for w in report["warnings"])

    command = [sys.executable, "-m", "leveret", "status", "--broker-url", rabbit_url]
    command += ["--namespace", namespace, "--no-management", "--wait", "0"]
    path = tmp_path / "status.txt"
    with path.open("wb") as file:
        subprocess.run(command, stdout=file, check=True, timeout=60, cwd=ROOT)
    text = path.read_bytes().decode()
    assert "host" + printable(HOSTILE)[:20] in text
    assert "last error of host" in text
    assert "not connected" in text
    assert _clean(text), [line for line in text.splitlines() if not _clean(line)]

    watched = _watch(command, until="WARNINGS")
    assert watched.startswith(_CLEAR)
    assert _clean(watched.replace(_CLEAR, "")), watched


def _watch(command: list[str], *, until: str) -> str:
    """What `command --watch` writes to a terminal until `until` shows (then Ctrl-C)."""
    main_end, child_end = pty.openpty()
    process = subprocess.Popen(
        [*command, "--watch"], stdout=child_end, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    os.close(child_end)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while until.encode() not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([main_end], [], [], 1)
            if ready:
                output += os.read(main_end, 65536)
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:  # it did not end within 10 s of Ctrl-C: the test failed
            process.kill()  # SIGKILL to its pid, then reaped: nothing left running (and no
            process.wait(10)  # "still running" warning from Popen.__del__ in a later test)
        os.close(main_end)
    return output.decode().replace("\r\n", "\n")


def test_the_latest_heartbeat_to_arrive_wins_whatever_its_clock_says() -> None:
    """Which heartbeat of a worker id counts is decided by arrival, which a forger cannot
    push ahead, not by `sent_at`, which anyone can set; and `sent_at` is trusted no further
    than a small tolerance ahead of the reader's clock."""
    now = 1_800_000_000.0
    real = {"id": "w1", "host": "web-1", "pid": 10, "sent_at": now - 1}
    stop = {"id": "w1", "state": "stopped", "sent_at": now + 10**9}
    forged = {"id": "w1", "host": "forged", "pid": 66, "sent_at": now + 10**9}

    def shown(*beats: dict[str, Any]) -> list[tuple[str, int]]:
        rows, ignored = parse_workers([json.dumps(beat).encode() for beat in beats], now)
        assert ignored == 0
        return [(row.host, row.pid) for row in rows]

    assert shown(stop, real) == [("web-1", 10)]  # the worker's next heartbeat shows it again
    assert shown(forged, real) == [("web-1", 10)]
    assert shown(real, stop) == []  # a stop arriving last: gone until its next heartbeat
    [row], _ = parse_workers([json.dumps(forged).encode()], now)
    assert row.last_seen == now + CLOCK_TOLERANCE_S
    assert row.age_s == 0


@pytest.mark.rabbitmq
def test_a_forged_heartbeat_neither_hides_nor_replaces_a_running_worker(
    rabbit_url: str, namespace: str, worker: WorkerProcess
) -> None:
    """A heartbeat with a live worker's id, ``state: stopped`` (or another host and pid) and
    a far-future ``sent_at`` hides (or replaces) it at most until its next heartbeat."""
    wait_until(lambda: status(rabbit_url, namespace)["workers"], 15, "the worker's heartbeat")
    [real] = status(rabbit_url, namespace)["workers"]
    far = time.time() + 10 * 365 * 86400

    def seen() -> list[tuple[str, int]]:
        return [(w["host"], w["pid"]) for w in status(rabbit_url, namespace)["workers"]]

    _publish_heartbeats(rabbit_url, namespace, _forged(real["id"], state="stopped", sent_at=far))
    wait_until(lambda: seen() == [(real["host"], worker.pid)], 10, "the worker shown again")
    _publish_heartbeats(rabbit_url, namespace, _forged(real["id"], sent_at=far))
    wait_until(lambda: seen() == [(real["host"], worker.pid)], 10, "the worker shown as itself")


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_FIELDS = st.sampled_from(["id", "sent_at", "pid", "interval_s", "queues", "host", "x"])


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.one_of(
                _SCALARS,
                st.lists(_SCALARS, max_size=4),
                st.dictionaries(
                    _FIELDS,
                    _SCALARS | st.lists(_SCALARS, max_size=4) | st.dictionaries(_FIELDS, _SCALARS),
                    max_size=6,
                ),
            ).map(lambda value: json.dumps(value, allow_nan=True).encode()),
        ),
        max_size=20,
    )
)
@example([b'{"id": "past", "sent_at": -1e18}', b'{"id": "future", "sent_at": 1e300}'])
@settings(max_examples=300, deadline=None)
def test_parse_workers_never_raises(bodies: list[bytes]) -> None:
    """Whatever the bodies, the rows parse, and render as a table and as JSON."""
    rows, ignored = parse_workers(bodies, now=1_800_000_000.0)
    assert len(rows) + ignored <= len(bodies)
    for row in rows:
        assert row.id
        assert math.isfinite(row.age_s)
    snapshot = Snapshot("ns", 1_800_000_000.0, rows, [], [], "amqp")
    json.dumps(snapshot.to_json())
    render(snapshot)


@pytest.mark.rabbitmq
def test_a_refused_heartbeats_exchange_is_one_warning_and_the_worker_goes_on(
    rabbit_broker: RabbitBroker, rabbit_url: str, namespace: str
) -> None:
    """Someone declared the heartbeats exchange otherwise (or the user may not): the worker
    logs one warning, keeps consuming, and tries again a minute later, not every beat."""
    rabbit_broker.declare(*actors_in([MODULE]))
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    try:
        connection.channel().exchange_declare(
            naming.heartbeats_exchange(namespace), exchange_type="topic", durable=True
        )
    finally:
        connection.close()
    process = WorkerProcess(
        [MODULE], namespace, args=["--queues", "counted", "--heartbeat-interval", "0.2"]
    )
    try:
        process.wait_consuming()
        wait_until(lambda: '"heartbeats_refused"' in process.log(), 10, "the warning")
        rabbit_broker.publish(Work(n=1))
        wait_until(lambda: '"message_handled"' in process.log(), 10, "the message handled")
        assert process.log().count('"heartbeats_refused"') == 1
        assert process.process.poll() is None
    finally:
        process.stop_gracefully()
