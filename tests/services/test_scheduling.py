"""Schedules in a user's tests (the in-memory broker's virtual clock: a week in no time),
`leveret scheduler --list`, and `leveret worker --scheduler` on the real broker."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pika
import pika.exceptions
import pytest

from leveret import Actor, Message, cron, handler, schedule
from leveret.schemas.errors import InvalidArgument
from leveret.services import RabbitBroker
from leveret.services.testing import MemoryBroker, VirtualClock
from leveret.services.topology import naming
from tests.schedule_samples import Seconds, every_second
from tests.support import ROOT, LoggedProcess, run_python, tick_once, wait_until


class ReportDue(Message, topic="tests.scheduling.report_due"):
    day: str


class Reports(Actor, queue="tests.scheduling.reports"):
    time_limit_s = 10
    days: ClassVar[list[str]] = []

    @handler
    def on(self, msg: ReportDue) -> None:
        Reports.days.append(msg.day)


nightly = schedule(
    "tests-scheduling-nightly",
    cron("30 2 * * *", tz="Europe/Berlin"),
    message=lambda at: ReportDue(day=at.date().isoformat()),
    to=Reports,
)


def test_a_week_on_the_virtual_clock_sends_seven_nightly_reports() -> None:
    """What a user's test does: advance a week, assert what was sent and handled. It
    crosses the spring-forward night of 2026-03-29 in Berlin."""
    Reports.days = []
    start = datetime(2026, 3, 25, 12, tzinfo=UTC)
    broker = MemoryBroker(namespace="scheduling", clock=VirtualClock(start.timestamp()))
    broker.declare(Reports)
    broker.add_schedules(nightly)
    broker.advance_clock(7 * 24 * 3600)
    broker.join()
    assert Reports.days == [f"2026-03-{day}" for day in range(26, 33) if day <= 31] + ["2026-04-01"]
    assert [tick.scheduled_at for tick in broker.sent_ticks][3] == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )  # 03:00 CEST: 02:30 did not exist that night
    assert len({tick.message_id for tick in broker.sent_ticks}) == 7


def leveret(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "leveret", *args)


def test_list_shows_next_runs_and_the_last_tick_sent(rabbit_broker: RabbitBroker) -> None:
    args = ("--broker-url", rabbit_broker.url, "--namespace", rabbit_broker.namespace)
    before = leveret("scheduler", "tests.schedule_samples", "--list", *args)
    assert before.returncode == 0, before.stderr
    assert "tests-every-second: every 0:00:01, send to schedules.seconds" in before.stdout
    assert "last sent: -" in before.stdout
    assert before.stdout.count("next: ") == 3
    try:
        tick_once(rabbit_broker, every_second)
    finally:
        rabbit_broker.declare(Seconds)  # declared by the scheduler: deleted afterwards
    after = leveret("scheduler", "tests.schedule_samples", "--list", *args)
    assert "last sent: -" not in after.stdout
    assert "last sent: 20" in after.stdout


def test_worker_with_scheduler_sends_and_handles_the_ticks(
    rabbit_broker: RabbitBroker, tmp_path: Path
) -> None:
    rabbit_broker.declare(Seconds)
    process = LoggedProcess(
        [
            *(sys.executable, "-m", "leveret", "worker", "tests.schedule_samples"),
            *("--scheduler", "--threads", "1", "--log-format", "json"),
            *("--broker-url", rabbit_broker.url, "--namespace", rabbit_broker.namespace),
        ],
        tmp_path / "worker.log",
    )
    try:
        wait_until(lambda: process.log().count('"message_handled"') >= 3, 30, "handled ticks")
        process.signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.log()
    finally:
        process.stop()
    log = (tmp_path / "worker.log").read_text()
    assert '"scheduler_leading"' in log
    assert '"scheduler_stopped"' in log
    assert '"actor":"schedules.seconds"' in log  # the worker handled its own ticks


def _stream_reply(url: str, namespace: str) -> int:
    """The reply code of a passive declare of the scheduler's state stream (200: it exists)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(naming.scheduler_state(namespace), passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        if connection.is_open:
            connection.close()
    return 200


def test_list_declares_nothing_and_says_no_state_is_stored_yet(
    rabbit_broker: RabbitBroker,
) -> None:
    """A read-only command: on a namespace where no scheduler ran, `--list` creates no
    state stream, and says that no state is stored yet."""
    args = ("--broker-url", rabbit_broker.url, "--namespace", rabbit_broker.namespace)
    listed = leveret("scheduler", "tests.schedule_samples", "--list", *args)
    assert listed.returncode == 0, listed.stderr
    assert "no state stored yet" in listed.stdout
    assert "last sent: -" in listed.stdout
    assert _stream_reply(rabbit_broker.url, rabbit_broker.namespace) == 404  # not found


def test_help_bounds_the_takeover_as_the_docs_do() -> None:
    helped = leveret("scheduler", "--help")
    text = " ".join(helped.stdout.split())
    docs = " ".join((ROOT / "docs" / "scheduling.md").read_text().split())
    assert "within seconds" not in text
    for bound in ("about a second", "16 s"):
        assert bound in text
        assert bound in docs


def test_a_grace_below_a_second_is_refused_where_it_is_passed() -> None:
    """Ticks found later than the grace at a step are missed ticks: a grace under a
    second would take every tick sent a few milliseconds late for one."""
    broker = MemoryBroker(namespace="scheduling-grace")
    with pytest.raises(InvalidArgument, match="grace_s must be at least 1 second"):
        broker.scheduler([nightly], grace_s=0.5)
