"""`leveret dlq list/show/replay/purge` on the real RabbitMQ, and the same operations through
Python on the in-memory broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pika
import pika.exceptions
import pytest

from leveret.actors import Actor, Reject, RetryPolicy, fixed, handler
from leveret.schemas import Message, wire
from leveret.schemas.errors import NotFound
from leveret.services import MemoryBroker, RabbitBroker
from leveret.services.broker import Broker
from leveret.services.rabbitmq._dlq_pass import dlq_lock
from leveret.services.testing import memory_broker
from leveret.services.topology import naming
from tests import raw_amqp
from tests.sample_actors import Job, Jobs
from tests.support import ROOT, dlq_lock_held, leveret_cli, running, take_all, wait_until


def dlq(
    broker: RabbitBroker, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `leveret dlq ARGS` against `broker`'s RabbitMQ and namespace."""
    return leveret_cli(
        "dlq", *args, "--broker-url", broker.url, "--namespace", broker.namespace, stdin=stdin
    )


@pytest.fixture
def dead(rabbit_broker: RabbitBroker) -> dict[int, str]:
    """Jobs 1, 2 and 3 failed and dead-lettered (Jobs never retries): {n: message_id}."""
    with running(rabbit_broker, Jobs, threads=2):
        ids = {n: Jobs.send(Job(n=n, fail=True)) for n in (1, 2, 3)}
        wait_until(lambda: _dead_count(rabbit_broker) == 3, 15, "3 dead letters")
    return ids


def _dead_count(broker: RabbitBroker) -> int:
    return broker.message_count(naming.dlq_name(broker.namespace, Jobs.queue))


def _queued_ids(broker: RabbitBroker) -> list[str | None]:
    queue = naming.queue_name(broker.namespace, Jobs.queue)
    return [props.message_id for props, _body in take_all(broker.url, queue)]


def test_list_prints_a_table_of_the_dead_letters(
    rabbit_broker: RabbitBroker, dead: dict[int, str]
) -> None:
    """One row per dead letter: id, topic, attempts, reason, error, failed at; none removed."""
    result = dlq(rabbit_broker, "list", "jobs")
    assert result.returncode == 0, result.stderr
    header, *rows, footer = result.stdout.splitlines()
    assert header.split() == ["ID", "TOPIC", "ATTEMPTS", "REASON", "ERROR", "FAILED", "AT"]
    assert footer == "3 dead letter(s) shown"
    by_id = {row.split()[0]: row for row in rows}
    assert set(by_id) == set(dead.values())
    for n, message_id in dead.items():
        cells = re.split(r"\s{2,}", by_id[message_id].strip())
        assert cells[:5] == [
            message_id,
            "tests.job",
            "1",
            "handler_error",
            f"RuntimeError: job {n} failed on purpose",
        ]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", cells[5]), cells
    assert _dead_count(rabbit_broker) == 3


def test_show_prints_the_headers_and_the_body(
    rabbit_broker: RabbitBroker, dead: dict[int, str]
) -> None:
    """`dlq show QUEUE ID`: the message's id, topic, every header, and its JSON body."""
    result = dlq(rabbit_broker, "show", "jobs", dead[2])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"message_id:     {dead[2]}" in out
    assert "topic:          tests.job" in out
    assert f"  {wire.ERROR_REASON}: handler_error" in out
    assert f"  {wire.ERROR_TYPE}: builtins.RuntimeError" in out
    assert f"  {wire.ERROR_MESSAGE}: job 2 failed on purpose" in out
    assert f"  {wire.ATTEMPT}: 1" in out
    assert "Traceback" in out  # the x-leveret-error-traceback header
    body = out.split("body: ", 1)[1]
    assert json.loads(body) == {"n": 2, "sleep_s": 0.0, "fail": True}
    assert _dead_count(rabbit_broker) == 3


def test_show_an_unknown_id_fails_naming_it(
    rabbit_broker: RabbitBroker, dead: dict[int, str]
) -> None:
    result = dlq(rabbit_broker, "show", "jobs", "no-such-id")
    assert result.returncode != 0
    assert "no dead letter no-such-id in jobs" in result.stderr


def test_replay_one_id_replays_only_that_one(
    rabbit_broker: RabbitBroker, dead: dict[int, str]
) -> None:
    """`dlq replay QUEUE --id ID`: that message back on the actor's queue, the others stay."""
    result = dlq(rabbit_broker, "replay", "jobs", "--id", dead[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"replayed {dead[2]}",
        "1 dead letter(s) replayed to jobs",
    ]
    assert _queued_ids(rabbit_broker) == [dead[2]]
    assert {d.message_id for d in rabbit_broker.dead_letters(Jobs)} == {dead[1], dead[3]}


def test_replay_of_an_unknown_id_fails_naming_it(
    rabbit_broker: RabbitBroker, dead: dict[int, str]
) -> None:
    """The ids that were found are replayed; the others are named in the error."""
    result = dlq(rabbit_broker, "replay", "jobs", "--id", dead[1], "--id", "no-such-id")
    assert result.returncode == 1
    assert f"replayed {dead[1]}" in result.stdout
    assert "no dead letter no-such-id in jobs" in result.stderr
    assert _queued_ids(rabbit_broker) == [dead[1]]


def test_purge_of_an_unknown_queue_fails_before_asking(rabbit_broker: RabbitBroker) -> None:
    result = dlq(rabbit_broker, "purge", "nosuch", stdin="y\n")
    assert result.returncode == 1
    assert "Delete every dead letter" not in result.stdout
    assert f"{rabbit_broker.namespace}.nosuch" in result.stderr


def test_replay_needs_all_or_ids(rabbit_broker: RabbitBroker, dead: dict[int, str]) -> None:
    for args in ([], ["--all", "--id", dead[1]]):
        result = dlq(rabbit_broker, "replay", "jobs", *args)
        assert result.returncode == 2
        assert "give --all or at least one --id" in result.stderr
    assert _dead_count(rabbit_broker) == 3


def test_purge_asks_first_and_no_keeps_everything(
    rabbit_broker: RabbitBroker, dead: dict[int, str]
) -> None:
    result = dlq(rabbit_broker, "purge", "jobs", stdin="n\n")
    assert result.returncode != 0
    assert "Delete every dead letter of jobs (3)?" in result.stdout
    assert "Aborted" in result.stderr
    assert _dead_count(rabbit_broker) == 3


def test_purge_yes_deletes_them_and_says_how_many(
    rabbit_broker: RabbitBroker, dead: dict[int, str]
) -> None:
    result = dlq(rabbit_broker, "purge", "jobs", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3 dead letter(s) purged from jobs"
    assert _dead_count(rabbit_broker) == 0
    assert rabbit_broker.message_count(naming.queue_name(rabbit_broker.namespace, "jobs")) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["list", "nosuch"],
        ["show", "nosuch", "some-id"],
        ["replay", "nosuch", "--all"],
        ["purge", "nosuch", "--yes"],
    ],
    ids=["list", "show", "replay", "purge"],
)
def test_unknown_queue_fails_clearly(rabbit_broker: RabbitBroker, args: list[str]) -> None:
    """Exit non-zero with an error that names the queue, not a traceback."""
    result = dlq(rabbit_broker, *args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{rabbit_broker.namespace}.nosuch" in result.stderr
    assert result.stderr.startswith("Error: ")


# The same operations through Python, on the in-memory broker --------------------------


def test_memory_dead_letters_replay_and_purge() -> None:
    """List, replay one by id (attempt reset, failure headers gone), replay all, purge."""
    broker = MemoryBroker(namespace="dlq-test")
    broker.declare(Jobs)
    ids = [broker.send(Jobs, Job(n=n, fail=True)) for n in (1, 2, 3, 4)]
    broker.join(raise_errors=False)

    letters = broker.dead_letters(Jobs)
    assert [d.message_id for d in letters] == ids
    assert {d.headers[wire.ERROR_REASON] for d in letters} == {"handler_error"}
    assert len(broker.dead_letters("jobs", limit=2)) == 2

    seen: list[str] = []
    assert broker.replay_dead_letters(Jobs, message_ids={ids[1]}, on_replayed=seen.append) == 1
    assert seen == [ids[1]]
    assert [d.message_id for d in broker.dead_letters(Jobs)] == [ids[0], ids[2], ids[3]]
    queue = broker.queues[naming.queue_name(broker.namespace, Jobs.queue)]
    (again,) = queue
    assert again.message_id == ids[1]
    assert again.headers[wire.ATTEMPT] == 1
    assert not [key for key in again.headers if key.startswith("x-leveret-error-")]

    broker.join(raise_errors=False)  # it fails again: back in the .dlq
    assert len(broker.dead_letters(Jobs)) == 4
    assert broker.replay_dead_letters("jobs") == 4
    assert broker.dead_letters(Jobs) == []
    broker.join(raise_errors=False)
    assert broker.purge_dead_letters(Jobs) == 4
    assert broker.dead_letters(Jobs) == []
    assert broker.purge_dead_letters(Jobs) == 0


def test_memory_unknown_queue_is_not_found() -> None:
    broker = MemoryBroker(namespace="dlq-test")
    for operation in (
        broker.dead_letters,
        broker.replay_dead_letters,
        broker.purge_dead_letters,
    ):
        with pytest.raises(NotFound, match=re.escape("dlq-test.nosuch.dlq")):
            operation("nosuch")


def test_show_and_list_escape_what_a_publisher_put_in_the_message(
    rabbit_broker: RabbitBroker,
) -> None:
    """Terminal escape sequences and bidirectional overrides in headers, ids and the body are
    shown escaped, never sent raw to the operator's terminal."""
    import pika

    rabbit_broker.declare(Jobs)
    dlq_name = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)
    with rabbit_broker.admin() as channel:
        channel.basic_publish(
            "",
            dlq_name,
            b'{"n": 1, "note": "\\u001b[2J"}',
            pika.BasicProperties(
                message_id="evil\x1b]0;owned\x07",
                type="tests.job",
                headers={
                    wire.ERROR_REASON: "handler_error",
                    wire.ERROR_MESSAGE: "\x1b[31mred\u202eerif",
                    wire.ERROR_TRACEBACK: "Traceback\n  line \x1b[1A\n",
                },
            ),
        )
    listed = dlq(rabbit_broker, "list", "jobs")
    shown = dlq(rabbit_broker, "show", "jobs", "evil\x1b]0;owned\x07")
    for result in (listed, shown):
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout
        assert "\u202e" not in result.stdout
        assert "\\x1b" in result.stdout
    assert "\\u202e" in shown.stdout
    assert "    line \\x1b[1A" in shown.stdout  # the traceback keeps its lines


def test_purge_while_another_operation_runs_fails_fast_and_removes_nothing(
    rabbit_broker: RabbitBroker, dead: dict[int, str]
) -> None:
    """While a `dlq list` holds the .dlq (its lock), `purge --yes` exits 1 saying so, and
    every letter is still there; once it is free, purge removes them and says how many."""
    dlq_name = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)
    lock = naming.dlq_lock(rabbit_broker.namespace, Jobs.queue)
    with rabbit_broker.admin() as channel:
        dlq_lock(channel.connection, lock, dlq_name)
        refused = dlq(rabbit_broker, "purge", "jobs", "--yes")
        assert refused.returncode == 1
        assert f"another dead-letter operation on {dlq_name} is running" in refused.stderr
        assert _dead_count(rabbit_broker) == 3
    purged = dlq(rabbit_broker, "purge", "jobs", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "3 dead letter(s) purged from jobs"
    assert _dead_count(rabbit_broker) == 0


def test_purge_during_a_running_list_is_refused_and_the_list_keeps_every_letter(
    rabbit_broker: RabbitBroker,
) -> None:
    """`dlq purge --yes` run while a `dlq list` passes over 3,000 letters: refused; the list
    ends with the 3,000 letters there, and a purge afterwards removes exactly 3,000."""
    rabbit_broker.declare(Jobs)
    dlq_name = naming.dlq_name(rabbit_broker.namespace, Jobs.queue)
    with raw_amqp.client(rabbit_broker.url) as client:
        for n in range(3000):
            client.publish(
                dlq_name,
                json.dumps({"n": n}).encode(),
                pika.BasicProperties(message_id=f"letter-{n}", type="tests.job"),
            )
    wait_until(lambda: _dead_count(rabbit_broker) == 3000, 20, "3,000 letters")
    listing = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "leveret.services.cli",
            "dlq",
            "list",
            "jobs",
            "--limit",
            "1",
            "--broker-url",
            rabbit_broker.url,
            "--namespace",
            rabbit_broker.namespace,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _lock_held(rabbit_broker), 20, "the list to hold the .dlq")
        # Paused in its pass (it may otherwise finish it before the purge starts): the
        # purge meets the list at work, whatever the machine's speed.
        os.kill(listing.pid, signal.SIGSTOP)
        try:
            refused = dlq(rabbit_broker, "purge", "jobs", "--yes")
        finally:
            os.kill(listing.pid, signal.SIGCONT)
        _out, err = listing.communicate(timeout=60)
    finally:
        if listing.poll() is None:
            listing.kill()
    assert refused.returncode == 1
    assert "another dead-letter operation" in refused.stderr
    assert listing.returncode == 0, err
    assert _dead_count(rabbit_broker) == 3000
    purged = dlq(rabbit_broker, "purge", "jobs", "--yes")
    assert purged.stdout.strip() == "3000 dead letter(s) purged from jobs"
    assert _dead_count(rabbit_broker) == 0


def _lock_held(broker: RabbitBroker) -> bool:
    return dlq_lock_held(broker, Jobs.queue)


# Where a dead letter was first published (issue 24.22) ---------------------------------


class Traced(Message, topic="tests.dlq.traced"):
    key: str
    reject: bool = False


class Origins(Actor, queue="origins"):
    """Fails every time: one retry a second later through the delay levels, then the .dlq
    (at once for `reject`)."""

    retry = RetryPolicy(attempts=2, backoff=fixed(1))

    @handler
    def on(self, msg: Traced) -> None:
        if msg.reject:
            raise Reject("no retry")
        raise RuntimeError(f"{msg.key} fails")


def _send_each_way(broker: Broker) -> None:
    """One message published, one sent, one sent with a delay and one published with a
    delay (these two dead-lettered at their first delivery)."""
    broker.publish(Traced(key="published"))
    broker.send(Origins, Traced(key="sent"))
    broker.send(Origins, Traced(key="sent-later", reject=True), delay=1)
    broker.publish(Traced(key="published-later", reject=True), delay=1)


def _origins(broker: Broker) -> dict[str, tuple[object, object]]:
    return {
        json.loads(letter.body)["key"]: (
            letter.headers[wire.ORIGINAL_EXCHANGE],
            letter.headers[wire.ORIGINAL_ROUTING_KEY],
        )
        for letter in broker.dead_letters(Origins)
    }


def _first_publishes(broker: Broker) -> dict[str, tuple[object, object]]:
    events, queue = naming.events_exchange(broker.namespace), broker.namespace + ".origins"
    return {
        "published": (events, Traced.topic()),
        "sent": ("", queue),
        "sent-later": ("", queue),
        "published-later": (events, Traced.topic()),
    }


def test_a_dead_letter_names_where_its_message_was_first_published(
    rabbit_broker: RabbitBroker,
) -> None:
    """After a retry through the delay levels, or a delayed delivery, a dead letter's
    `x-leveret-original-exchange` and `-routing-key` name the first publish: the events
    exchange and the topic, or the actor's queue for a send; a replayed letter that fails
    again still names it."""
    with running(rabbit_broker, Origins, threads=2):
        _send_each_way(rabbit_broker)
        wait_until(lambda: rabbit_broker.dead_letter_count(Origins) == 4, 20, "4 letters")
        assert _origins(rabbit_broker) == _first_publishes(rabbit_broker)
        (published,) = rabbit_broker.dead_letters(
            Origins, where=lambda letter: b'"published"' in letter.body
        )
        assert rabbit_broker.replay_dead_letters(Origins, message_ids={published.message_id}) == 1
        wait_until(lambda: rabbit_broker.dead_letter_count(Origins) == 4, 20, "failed again")
    assert _origins(rabbit_broker) == _first_publishes(rabbit_broker)


def test_memory_a_dead_letter_names_where_its_message_was_first_published() -> None:
    """The same on the in-memory broker."""
    with memory_broker(Origins) as broker:
        _send_each_way(broker)
        broker.join(raise_errors=False)
        assert _origins(broker) == _first_publishes(broker)


# dlq show by a prefix of the id; passwords in what it prints (issues 24.22, 24.12) -----


def test_show_accepts_a_unique_prefix_of_the_id(
    rabbit_broker: RabbitBroker, dead: dict[int, str]
) -> None:
    """`dlq show QUEUE 6f1c` shows the one letter whose id starts with it."""
    prefixes = {
        n: next(
            message_id[:k]
            for k in range(4, 33)
            if [other.startswith(message_id[:k]) for other in dead.values()].count(True) == 1
        )
        for n, message_id in dead.items()
    }
    result = dlq(rabbit_broker, "show", "jobs", prefixes[2])
    assert result.returncode == 0, result.stderr
    assert f"message_id:     {dead[2]}" in result.stdout


def _publish_letters(broker: RabbitBroker, ids: list[str], **headers: str) -> None:
    broker.declare(Jobs)
    with raw_amqp.client(broker.url) as client:
        for n, message_id in enumerate(ids):
            client.publish(
                naming.dlq_name(broker.namespace, Jobs.queue),
                json.dumps({"n": n}).encode(),
                pika.BasicProperties(
                    message_id=message_id,
                    type="tests.job",
                    headers={wire.ERROR_REASON: "handler_error", **headers},
                ),
            )


def test_show_an_ambiguous_prefix_lists_the_candidates(rabbit_broker: RabbitBroker) -> None:
    """A prefix several ids start with: exit 1, the candidates named; an id that is whole
    is shown even when it is also the prefix of others."""
    _publish_letters(rabbit_broker, ["abc1", "abc2", "abd3", "ab"])
    ambiguous = dlq(rabbit_broker, "show", "jobs", "abc")
    assert ambiguous.returncode == 1
    assert "abc1" in ambiguous.stderr
    assert "abc2" in ambiguous.stderr
    assert "abd3" not in ambiguous.stderr
    assert "give more of the id" in ambiguous.stderr
    whole = dlq(rabbit_broker, "show", "jobs", "ab")
    assert whole.returncode == 0, whole.stderr
    assert "message_id:     ab\n" in whole.stdout
    none = dlq(rabbit_broker, "show", "jobs", "zz")
    assert none.returncode == 1
    assert "no dead letter zz in jobs" in none.stderr


def test_show_and_list_never_print_a_password(rabbit_broker: RabbitBroker) -> None:
    """A letter whose error message holds a broker URL with its password (a connection
    error): `dlq show` and `dlq list` print the URL with the password hidden."""
    secret = "amqp://shop:s3cr3t-pw@rabbit.internal:5672/prod"
    _publish_letters(
        rabbit_broker,
        ["with-url"],
        **{wire.ERROR_MESSAGE: f"cannot connect to {secret}", "x-app-note": secret},
    )
    shown = dlq(rabbit_broker, "show", "jobs", "with-url")
    listed = dlq(rabbit_broker, "list", "jobs")
    for result in (shown, listed):
        assert result.returncode == 0, result.stderr
        assert "s3cr3t-pw" not in result.stdout
    assert "amqp://shop:***@rabbit.internal:5672/prod" in shown.stdout
