"""Operating a dead-letter queue never loses or multiplies letters: browsing changes
nothing even under a delivery limit (RabbitMQ 4's default is 20), and `replay --all` ends,
replaying each letter present when it began once, even while the handler still fails."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from leveret.schemas import wire
from leveret.services import RabbitBroker
from leveret.services.rabbitmq import _dlq_pass
from leveret.services.rabbitmq._dlq_pass import dlq_lock
from leveret.services.topology import naming
from tests import raw_amqp
from tests.faults.helpers import events
from tests.sample_actors import Job, Jobs
from tests.support import (
    ROOT,
    dlq_lock_held,
    queue_policy,
    run_python,
    running,
    take_all,
    wait_until,
)

pytestmark = [pytest.mark.fault]

LETTERS = 30


def leveret(broker: RabbitBroker, *args: str) -> subprocess.CompletedProcess[str]:
    return run_python(*_cli(broker, "leveret.services.cli", *args), timeout_s=120)


@pytest.fixture
def dead(rabbit_broker: RabbitBroker) -> list[str]:
    """`LETTERS` failed jobs in Jobs' .dlq (Jobs never retries), oldest first: their ids."""
    # A fixed prefetch: one consumer throughout, so the letters keep the order sent.
    with running(rabbit_broker, Jobs, threads=1, prefetch=2):
        ids = [Jobs.send(Job(n=n, fail=True)) for n in range(LETTERS)]
        wait_until(lambda: rabbit_broker.dead_letter_count(Jobs) == LETTERS, 20, "the letters")
    return ids


@pytest.fixture
def delivery_limit_2(rabbit_broker: RabbitBroker) -> Iterator[None]:
    """A policy `delivery-limit: 2` on Jobs' .dlq, as RabbitMQ 4 applies 20 by default."""
    dlq = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)
    with queue_policy(f"{rabbit_broker.namespace}-dlq-limit", dlq, '{"delivery-limit": 2}'):
        yield


def test_browsing_ten_times_under_a_delivery_limit_changes_nothing(
    rabbit_broker: RabbitBroker, dead: list[str], delivery_limit_2: None
) -> None:
    """list, show and the scan of `replay --id` (no match), over and over: every letter is
    still there, in order, with its headers and body, and its delivery count is fresh."""
    before = rabbit_broker.dead_letters(Jobs)
    for _ in range(3):
        assert leveret(rabbit_broker, "dlq", "list", "jobs").returncode == 0
        shown = leveret(rabbit_broker, "dlq", "show", "jobs", dead[LETTERS // 2])
        assert shown.returncode == 0, shown.stderr
        missing = leveret(rabbit_broker, "dlq", "replay", "jobs", "--id", "no-such-id")
        assert missing.returncode == 1
    assert [letter.message_id for letter in rabbit_broker.dead_letters(Jobs, offset=5)] == dead[5:]
    after = rabbit_broker.dead_letters(Jobs)
    assert [letter.message_id for letter in after] == dead
    # Every header is kept but the broker's count and the pass that last put it back.
    changing = ("x-delivery-count", wire.DLQ_PUT_BACK_BY)
    for old, new in zip(before, after, strict=True):
        assert new.body == old.body
        kept = {k: v for k, v in old.headers.items() if k not in changing}
        assert {k: v for k, v in new.headers.items() if k not in changing} == kept
        assert new.headers.get("x-delivery-count", 0) == 0
        assert new.headers[wire.ERROR_REASON] == "handler_error"


def test_two_operations_on_one_dead_letter_queue_do_not_mix(
    rabbit_broker: RabbitBroker, dead: list[str]
) -> None:
    """While one pass holds a .dlq, a second is refused with a clear error."""
    dlq = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)
    with rabbit_broker.admin() as channel:
        dlq_lock(channel.connection, naming.dlq_lock(rabbit_broker.namespace, Jobs.queue), dlq)
        result = leveret(rabbit_broker, "dlq", "list", "jobs")
    assert result.returncode == 1
    assert "another dead-letter operation" in result.stderr
    assert leveret(rabbit_broker, "dlq", "list", "jobs").returncode == 0  # released


def test_replay_all_while_the_handler_still_fails_ends_and_replays_each_once(
    rabbit_broker: RabbitBroker, dead: list[str], record: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dead-letters each replayed letter again at once: the replay still ends,
    having replayed the 30 letters it found, once each (not thousands of times)."""
    monkeypatch.setenv("LEVERET_TEST_RECORD", record)
    with running(rabbit_broker, Jobs, threads=4):
        result = leveret(rabbit_broker, "dlq", "replay", "jobs", "--all")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == f"{LETTERS} dead letter(s) replayed to jobs"
        wait_until(lambda: rabbit_broker.dead_letter_count(Jobs) == LETTERS, 20, "all dead again")
    runs = [line[3] for line in events(record, "start")]
    assert sorted(runs) == sorted(dead), "each replayed letter ran exactly once"


# Interrupted and concurrent passes (issue 24.4, 24.23) -------------------------------

KILL_LETTERS = 2000
TARGETED_KILLS = 8
RANDOM_KILLS = 4


def _fill_dlq(broker: RabbitBroker, count: int, prefix: str = "letter") -> list[str]:
    """`count` dead letters published straight into Jobs' .dlq (as the broker's own
    dead-lettering or an older Leveret leaves them): their ids, oldest first."""
    broker.declare(Jobs)
    dlq = naming.dlq_name(broker.namespace, Jobs.queue)
    before = broker.message_count(dlq)
    ids = [f"{prefix}-{n:05d}" for n in range(count)]
    with raw_amqp.client(broker.url) as client:
        for n, message_id in enumerate(ids):
            client.publish(
                dlq,
                json.dumps({"n": n, "fail": True}).encode(),
                pika.BasicProperties(
                    message_id=message_id,
                    type="tests.job",
                    delivery_mode=2,
                    headers={wire.ERROR_REASON: "handler_error", wire.ATTEMPT: 1},
                ),
            )
    wait_until(lambda: broker.message_count(dlq) == before + count, 30, f"{count} letters")
    return ids


def _lock_held(broker: RabbitBroker) -> bool:
    return dlq_lock_held(broker, Jobs.queue)


def _cli(broker: RabbitBroker, module: str, *args: str) -> list[str]:
    """The arguments of ``python`` running `module` with `args` on `broker`'s namespace."""
    return [
        "-m",
        module,
        *args,
        "--broker-url",
        broker.url,
        "--namespace",
        broker.namespace,
    ]


def _letters_by_id(broker: RabbitBroker) -> tuple[list[str], list[int]]:
    """Every message id in Jobs' .dlq, in queue order (the queue is emptied), and the
    delivery counts the broker reports for them."""
    taken = take_all(broker.url, naming.dlq_name(broker.namespace, Jobs.queue))
    counts = [int(str((props.headers or {}).get("x-delivery-count", 0))) for props, _ in taken]
    return [str(props.message_id) for props, _body in taken], counts


def test_dlq_list_killed_during_its_pass_loses_and_doubles_nothing(
    rabbit_broker: RabbitBroker,
) -> None:
    """`dlq list` SIGKILLed 12 times during its pass over 2,000 letters (8 times while the
    broker applies one of its commits, 4 at random moments), then run once to the end:
    every letter is there exactly once, and none counts a delivery."""
    ids = _fill_dlq(rabbit_broker, KILL_LETTERS)
    batches = KILL_LETTERS // _dlq_pass.BATCH
    listing = _cli(rabbit_broker, "leveret", "dlq", "list", "jobs", "--limit", "1")
    for _ in range(TARGETED_KILLS):
        commit = random.randint(2, max(2, batches - 1))
        victim = run_python(
            *_cli(rabbit_broker, "tests.faults.dlq_victim", "dlq", "list", "jobs", "--limit", "1"),
            env={"LEVERET_TEST_KILL_AT_COMMIT": str(commit)},
        )
        assert victim.returncode == -signal.SIGKILL, victim.stderr
        wait_until(lambda: not _lock_held(rabbit_broker), 10, "the killed pass's lock")
    started = time.monotonic()
    whole = run_python(*listing)
    assert whole.returncode == 0, whole.stderr
    pass_s = time.monotonic() - started
    for _ in range(RANDOM_KILLS):
        victim_process = subprocess.Popen(
            [sys.executable, *listing],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: _lock_held(rabbit_broker) or victim_process.poll() is not None,
            20,
            "the pass to start",
        )
        time.sleep(random.uniform(0.0, pass_s / 2))  # a random moment of the pass
        victim_process.send_signal(signal.SIGKILL)
        victim_process.wait(10)
        wait_until(lambda: not _lock_held(rabbit_broker), 10, "the killed pass's lock")

    after = run_python(*listing)
    assert after.returncode == 0, after.stderr
    found, delivery_counts = _letters_by_id(rabbit_broker)
    seen = collections.Counter(found)
    doubles = sum(n - 1 for n in seen.values())
    lost = [message_id for message_id in ids if message_id not in seen]
    print(f"kills {TARGETED_KILLS + RANDOM_KILLS}: doubles {doubles}, lost {len(lost)}")
    assert (doubles, len(lost)) == (0, 0)
    assert set(seen) == set(ids)
    assert set(delivery_counts) == {0}


def test_a_pass_over_a_few_batches_keeps_the_order_and_counts_no_delivery(
    rabbit_broker: RabbitBroker,
) -> None:
    """Letters filling two and a half transactions' worth: after three `dlq list`, every
    one is there once, in the order it was, and none counts a delivery (the pass never
    takes a letter it does not visit, which the broker would count when given back)."""
    ids = _fill_dlq(rabbit_broker, 2 * _dlq_pass.BATCH + _dlq_pass.BATCH // 2)
    for _ in range(3):
        assert len(rabbit_broker.dead_letters(Jobs, limit=1)) == 1
    found, delivery_counts = _letters_by_id(rabbit_broker)
    assert found == ids
    assert set(delivery_counts) == {0}


def test_passes_while_the_queue_fills_keep_the_order_of_the_letters_they_found(
    rabbit_broker: RabbitBroker,
) -> None:
    """A quorum .dlq filled by another client while three passes run over it: each pass
    ends, every letter (old or new) is there once, none counts a delivery, and the letters
    that were there first are still in their order, first."""
    old = _fill_dlq(rabbit_broker, 3 * _dlq_pass.BATCH + 7)
    dlq = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)
    stop = threading.Event()
    new: list[str] = []

    def fill() -> None:
        with raw_amqp.client(rabbit_broker.url) as client:
            while not stop.is_set():
                message_id = f"new-{len(new):05d}"
                client.publish(
                    dlq,
                    b'{"n": -1}',
                    pika.BasicProperties(message_id=message_id, type="tests.job"),
                )
                new.append(message_id)

    filler = threading.Thread(target=fill)
    filler.start()
    try:
        wait_until(lambda: len(new) >= 50, 10, "the filler to start")
        for _ in range(3):
            rabbit_broker.dead_letters(Jobs, limit=1)
    finally:
        stop.set()
        filler.join(10)
    total = len(old) + len(new)
    wait_until(lambda: rabbit_broker.message_count(dlq) == total, 10, f"{total} letters")
    found, delivery_counts = _letters_by_id(rabbit_broker)
    assert collections.Counter(found) == collections.Counter(old + new)
    assert [message_id for message_id in found if message_id in set(old)] == old
    assert set(delivery_counts) == {0}


def _letter(n: int, message_id: str, **headers: str) -> tuple[bytes, pika.BasicProperties]:
    body = json.dumps({"n": n, "fail": True}).encode()
    props = pika.BasicProperties(
        message_id=message_id,
        type="tests.job",
        delivery_mode=2,
        headers={wire.ERROR_REASON: "handler_error", wire.ATTEMPT: 1, **headers},
    )
    return body, props


def _as_a_dead_pass_leaves_it(broker: RabbitBroker, taken: int, copies: list[int]) -> None:
    """What RabbitMQ leaves when a pass dies while it commits: its end marker behind the
    letters, its copies of some of the first `taken` letters (`copies`, with their
    contents) at the back, and those letters given back to the front as redelivered."""
    dlq = naming.dlq_name(broker.namespace, Jobs.queue)
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channel = connection.channel()
        channel.basic_publish(
            "", dlq, b"", pika.BasicProperties(headers={wire.DLQ_END_MARKER: "dead-pass"})
        )
        held = []
        for _ in range(taken):
            method, props, body = channel.basic_get(dlq)
            assert method is not None
            assert props is not None
            assert body is not None
            held.append((props, body))
        for n in copies:
            props, body = held[n]
            props.headers = {**(props.headers or {}), wire.DLQ_PUT_BACK_BY: "dead-pass"}
            channel.basic_publish("", dlq, body, props)
    finally:
        connection.close()  # the letters it held go back, unacked


def test_a_pass_removes_the_doubles_an_interrupted_pass_left(
    rabbit_broker: RabbitBroker,
) -> None:
    """A pass that died while RabbitMQ applied its commit left three letters both at the
    front (given back) and at the back (its copies): the next `dlq list` shows each letter
    once, in order, and afterwards the queue holds each once, without the dead marker."""
    rabbit_broker.declare(Jobs)
    dlq = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)
    ids = [f"letter-{n}" for n in range(10)]
    with raw_amqp.client(rabbit_broker.url) as client:
        for n, message_id in enumerate(ids):
            body, props = _letter(n, message_id, **{wire.DEAD_LETTER_ID: f"identity-{n}"})
            client.publish(dlq, body, props)
    _as_a_dead_pass_leaves_it(rabbit_broker, taken=4, copies=[0, 1, 2])
    wait_until(lambda: rabbit_broker.message_count(dlq) == 14, 10, "the doubles and marker")

    listed = leveret(rabbit_broker, "dlq", "list", "jobs")
    assert listed.returncode == 0, listed.stderr
    assert [row.split()[0] for row in listed.stdout.splitlines()[1:-1]] == ids
    assert listed.stderr.count("dead_letter_double_removed") == 3
    found, delivery_counts = _letters_by_id(rabbit_broker)
    assert found == ids
    assert set(delivery_counts) == {0}


def test_letters_that_only_look_like_doubles_are_all_kept(rabbit_broker: RabbitBroker) -> None:
    """Two letters without an identity that are identical, and a hostile letter that copies
    another's identity and claims a dead pass but differs in its body: none is removed."""
    rabbit_broker.declare(Jobs)
    dlq = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)
    with raw_amqp.client(rabbit_broker.url) as client:
        for _ in range(2):
            client.publish(dlq, *_letter(0, "twin"))
        client.publish(dlq, *_letter(1, "real", **{wire.DEAD_LETTER_ID: "identity-1"}))
    _as_a_dead_pass_leaves_it(rabbit_broker, taken=3, copies=[])
    with raw_amqp.client(rabbit_broker.url) as client:
        forged = {wire.DEAD_LETTER_ID: "identity-1", wire.DLQ_PUT_BACK_BY: "dead-pass"}
        client.publish(dlq, *_letter(2, "real", **forged))
    wait_until(lambda: rabbit_broker.message_count(dlq) == 5, 10, "the letters and marker")

    listed = leveret(rabbit_broker, "dlq", "list", "jobs")
    assert listed.returncode == 0, listed.stderr
    assert "dead_letter_double_removed" not in listed.stderr
    found, _counts = _letters_by_id(rabbit_broker)
    assert found == ["twin", "twin", "real", "real"]
