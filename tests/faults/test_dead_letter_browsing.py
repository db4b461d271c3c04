"""Operating a dead-letter queue never loses or multiplies letters: browsing changes
nothing even under a delivery limit (RabbitMQ 4's default is 20), and `replay --all` ends,
replaying each letter present when it began once, even while the handler still fails."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from leveret.schemas import wire
from leveret.services import RabbitBroker, naming
from leveret.services.rabbitmq._dlq_pass import dlq_lock
from tests.faults.helpers import events
from tests.sample_actors import Job, Jobs
from tests.support import RABBITMQCTL, ROOT, running, wait_until

pytestmark = [pytest.mark.fault]

LETTERS = 30


def leveret(broker: RabbitBroker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "leveret.services.cli",
            *args,
            "--broker-url",
            broker.url,
            "--namespace",
            broker.namespace,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


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
    name = f"{rabbit_broker.namespace}-dlq-limit"
    subprocess.run(
        [
            *RABBITMQCTL,
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "10",
            name,
            f"^{dlq.replace('.', '[.]')}$",
            '{"delivery-limit": 2}',
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield
    finally:
        subprocess.run([*RABBITMQCTL, "clear_policy", name], capture_output=True, timeout=60)


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
    for old, new in zip(before, after, strict=True):
        assert new.body == old.body
        kept = {k: v for k, v in old.headers.items() if k not in ("x-delivery-count",)}
        assert {k: v for k, v in new.headers.items() if k != "x-delivery-count"} == kept
        assert new.headers.get("x-delivery-count", 0) == 0
        assert new.headers[wire.ERROR_REASON] == "handler_error"


def test_two_operations_on_one_dead_letter_queue_do_not_mix(
    rabbit_broker: RabbitBroker, dead: list[str]
) -> None:
    """While one pass holds a .dlq, a second is refused with a clear error."""
    dlq = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)
    with rabbit_broker.admin() as channel:
        dlq_lock(channel.connection, dlq)
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
