"""`leveret dlq replay --all` puts every dead letter back exactly once, even when killed half way
and run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from leveret.schemas import wire
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.sample_actors import Job, Jobs
from tests.support import ROOT, running, take_all, wait_until

pytestmark = [pytest.mark.fault]

COUNT = 100
KILL_AFTER = 30


def _dead_letter(broker: RabbitBroker, count: int) -> set[str]:
    """`count` failing jobs, dead-lettered by a worker (Jobs never retries); their ids."""
    dlq = naming.dlq_name(broker.namespace, Jobs.queue)
    with running(broker, Jobs, threads=8):
        sent = set(broker.publish_many([Job(n=n, fail=True) for n in range(count)]))
        wait_until(lambda: broker.message_count(dlq) == count, 30, f"{count} dead letters")
    letters = broker.dead_letters(Jobs, limit=10 * count)
    assert {letter.message_id for letter in letters} == sent
    assert {letter.headers[wire.ERROR_REASON] for letter in letters} == {"handler_error"}
    return sent


def _replay(broker: RabbitBroker) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "leveret.services.cli",
            "dlq",
            "replay",
            Jobs.queue,
            "--all",
            "--broker-url",
            broker.url,
            "--namespace",
            broker.namespace,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_replayed_once(broker: RabbitBroker, dead: set[str]) -> None:
    queue = naming.queue_name(broker.namespace, Jobs.queue)
    dlq = naming.dlq_name(broker.namespace, Jobs.queue)
    assert broker.message_count(dlq) == 0
    assert broker.message_count(queue) == COUNT
    messages = take_all(broker.url, queue)
    ids = [props.message_id for props, _body in messages]
    assert len(ids) == len(set(ids)) == COUNT
    assert set(ids) == dead
    assert sorted(json.loads(body)["n"] for _props, body in messages) == list(range(COUNT))
    for props, _body in messages:
        assert props.type == "tests.job"
        headers = props.headers or {}
        assert headers[wire.ATTEMPT] == 1
        assert wire.REPLAYED_AT in headers
        assert not [key for key in headers if key.startswith("x-leveret-error-")]
        # The quorum queue counts deliveries from 0 on every message it hands out; the count
        # the dead letter had in the .dlq (read once by `dead_letters`) is not carried over.
        assert headers.get("x-delivery-count", 0) == 0
        broker_headers = set(wire.BROKER_HEADERS) - {"x-delivery-count"}
        assert not [key for key in headers if key in broker_headers]


def test_replay_all_puts_every_dead_letter_back_once(rabbit_broker: RabbitBroker) -> None:
    """100 dead letters, `dlq replay --all`: 100 messages with their ids, attempt reset."""
    dead = _dead_letter(rabbit_broker, COUNT)

    replay = _replay(rabbit_broker)
    out, err = replay.communicate(timeout=60)
    assert replay.returncode == 0, err
    lines = out.splitlines()
    assert {line.removeprefix("replayed ") for line in lines[:-1]} == dead
    assert lines[-1] == f"{COUNT} dead letter(s) replayed to jobs"
    _assert_replayed_once(rabbit_broker, dead)


def test_replay_killed_half_way_then_run_again_replays_each_once(
    rabbit_broker: RabbitBroker,
) -> None:
    """A replay SIGKILLed after ~30 messages, then run again: each message back exactly once."""
    dead = _dead_letter(rabbit_broker, COUNT)
    queue = naming.queue_name(rabbit_broker.namespace, Jobs.queue)
    dlq = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)

    replay = _replay(rabbit_broker)
    assert replay.stdout is not None
    reported = 0
    for line in replay.stdout:
        reported += line.startswith("replayed ")
        if reported == KILL_AFTER:
            os.kill(replay.pid, signal.SIGKILL)
            break
    replay.communicate(timeout=30)
    assert replay.returncode == -signal.SIGKILL, "the replay finished before it was killed"
    # Every message is in exactly one of the two queues (the one in flight went back); the
    # .dlq also holds the killed replay's end marker, which the next pass removes.
    wait_until(
        lambda: rabbit_broker.message_count(queue) + rabbit_broker.message_count(dlq) == COUNT + 1,
        10,
        f"{COUNT} messages between the queue and the .dlq, and a marker",
    )
    replayed_before = rabbit_broker.message_count(queue)
    assert KILL_AFTER <= replayed_before < COUNT

    again = _replay(rabbit_broker)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert out.splitlines()[-1] == f"{COUNT - replayed_before} dead letter(s) replayed to jobs"
    _assert_replayed_once(rabbit_broker, dead)
