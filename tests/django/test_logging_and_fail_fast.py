"""Leveret's events go where the project's logs go (Django's LOGGING, Sentry…), and a
request can fail fast instead of stalling and losing its message at commit."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import transaction
from pytest_django.fixtures import Settings

from leveret.django import TransactionalDispatcher
from leveret.django import publish as django_publish
from leveret.schemas.errors import BrokerUnavailable, PublishError
from leveret.services import Broker, RabbitBroker
from tests.django.plugin_actors import Complaint, Grumpy, Note, Tally
from tests.proxy import TcpProxy
from tests.support import (
    ROOT,
    KeptRecords,
    LoggedProcess,
    fill_until_refused,
    queue_policy,
    take_all,
    wait_until,
)

pytestmark = [pytest.mark.django_db(transaction=True)]

DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1/"


@pytest.fixture
def project_handler() -> Iterator[KeptRecords]:
    handler = KeptRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.fixture
def dead_broker() -> Iterator[Broker]:
    broker = Broker(DEAD_BROKER, namespace="failfast")
    yield broker
    broker.close()


def test_a_message_lost_at_commit_reaches_the_projects_log_handlers(
    project_handler: KeptRecords, dead_broker: Broker
) -> None:
    dispatcher = TransactionalDispatcher(dead_broker)
    with transaction.atomic():
        message_id = dispatcher.publish(Note(n=1), timeout=1)
    (record,) = [r for r in project_handler.records if r.msg == "message_lost_after_commit"]
    assert record.levelno == logging.ERROR
    assert record.name == "leveret.django"
    assert record.message_id == message_id  # type: ignore[attr-defined]
    assert record.topic == "tests.plugin.note"  # type: ignore[attr-defined]
    assert "unreachable" in record.error  # type: ignore[attr-defined]
    assert record.funcName == "_after_commit"


def test_a_transactions_messages_share_one_deadline_at_commit_when_the_broker_is_down(
    project_handler: KeptRecords, dead_broker: Broker
) -> None:
    """A view publishing six messages in one transaction with the broker down: the commit
    returns within one connect deadline (5 s), not one per message, and every message is
    logged as lost (the first with the broker's error, the others saying why they were not
    tried)."""
    dispatcher = TransactionalDispatcher(dead_broker)
    started = time.monotonic()
    with transaction.atomic():
        ids = [dispatcher.publish(Note(n=n)) for n in range(3)]
        ids += [dispatcher.send(Tally, Note(n=n)) for n in range(3, 6)]
    took_s = time.monotonic() - started
    lost = [r for r in project_handler.records if r.msg == "message_lost_after_commit"]
    assert [r.message_id for r in lost] == ids  # type: ignore[attr-defined]
    assert "unreachable" in lost[0].error  # type: ignore[attr-defined]
    assert all("earlier message" in r.error for r in lost[1:]), [r.error for r in lost]  # type: ignore[attr-defined]
    assert took_s < 7, took_s


def test_one_message_without_a_confirm_does_not_stop_the_rest_of_its_transaction(
    rabbit_url: str, namespace: str, project_handler: KeptRecords
) -> None:
    """At commit, a message its queue keeps refusing (full, reject-publish: nacked until
    its timeout) is logged as lost, and the transaction's next message, to a queue that
    takes it, is still sent: the broker is there."""
    broker = RabbitBroker(rabbit_url, namespace=namespace)
    try:
        broker.declare(Tally, Grumpy)
        queue = f"{namespace}.{Tally.queue}"
        full = '{"max-length": 1, "overflow": "reject-publish"}'
        with queue_policy(f"{namespace}-full", queue, full):
            fill_until_refused(broker, queue)
            dispatcher = TransactionalDispatcher(broker)
            with transaction.atomic():
                refused = dispatcher.send(Tally, Note(n=1), timeout=2)
                kept = dispatcher.send(Grumpy, Complaint(text="still sent"))
        lost = [r for r in project_handler.records if r.msg == "message_lost_after_commit"]
        assert [r.message_id for r in lost] == [refused]  # type: ignore[attr-defined]
        assert "nack" in lost[0].error  # type: ignore[attr-defined]
        stored = take_all(rabbit_url, f"{namespace}.{Grumpy.queue}")
        assert [props.message_id for props, _body in stored] == [kept]
    finally:
        broker.delete(Tally, Grumpy)
        broker.delete_namespace_exchanges()
        broker.close()


def test_fail_fast_raises_inside_the_transaction_so_it_can_roll_back(
    dead_broker: Broker,
) -> None:
    dispatcher = TransactionalDispatcher(dead_broker)
    with transaction.atomic():
        with pytest.raises(BrokerUnavailable, match="unreachable"):
            dispatcher.send(Tally, Note(n=1), fail_fast=True, timeout=2)
        assert not transaction.get_connection().run_on_commit, "nothing left to send"


def test_the_fail_fast_setting_applies_to_every_publish(
    dead_broker: Broker, settings: Settings
) -> None:
    settings.LEVERET = {**settings.LEVERET, "FAIL_FAST": True}
    dispatcher = TransactionalDispatcher(dead_broker)
    with pytest.raises(BrokerUnavailable), transaction.atomic():
        dispatcher.publish(Note(n=1), timeout=2)


def test_fail_fast_on_a_lost_connection_answers_without_waiting_for_the_next_attempt(
    rabbit_url: str, namespace: str
) -> None:
    """Connected, then cut: the next fail-fast publish raises at once with the reason; once
    the connection is back it goes through again."""
    with TcpProxy() as proxy:
        broker = RabbitBroker(proxy.url(rabbit_url), namespace=namespace, confirm_timeout_s=5)
        try:
            broker.check_available()
            proxy.cut()
            wait_until(lambda: not broker.publisher.connected.is_set(), 15, "the cut")
            with pytest.raises(BrokerUnavailable, match="unreachable"):
                broker.check_available(timeout=30)
            proxy.restore()
            wait_until(_available(broker), 40, "the reconnection")
        finally:
            broker.close()
            broker.delete_namespace_exchanges()


def _available(broker: Broker) -> Callable[[], bool]:
    def check() -> bool:
        try:
            broker.check_available(timeout=1)
        except BrokerUnavailable:
            return False
        return True

    return check


def test_outside_a_transaction_a_short_timeout_raises_publish_error(dead_broker: Broker) -> None:
    with pytest.raises(PublishError, match=r"no confirm within 1\.0s"):
        TransactionalDispatcher(dead_broker).publish(Note(n=1), timeout=1)


@pytest.mark.usefixtures("leveret_broker")
def test_an_invalid_timeout_fails_where_it_is_passed() -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        django_publish(Note(n=1), timeout=-1)


def test_the_worker_keeps_the_projects_handlers(tmp_path: Path) -> None:
    """`manage.py leveret_worker` with LOGGING: Leveret's events go to the project's
    handler, none is removed, and nothing is written to standard error besides."""
    log_file = tmp_path / "project.log"
    process = LoggedProcess(
        [
            *(sys.executable, "-m", "django", "leveret_worker", "--threads", "1"),
            *("--settings", "tests.django.settings"),
        ],
        tmp_path / "stderr.log",
        env={
            "LEVERET_TEST_SETTINGS": json.dumps(
                {"BROKER_URL": "memory://", "ACTORS": ["tests.django.plugin_actors"]}
            ),
            "LEVERET_TEST_LOG_FILE": str(log_file),
            "PYTHONPATH": str(ROOT),
        },
    )
    try:
        wait_until(
            lambda: log_file.exists() and "worker_consuming" in log_file.read_text(),
            30,
            "the worker to log to the project's file",
        )
        process.signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.log()
    finally:
        process.stop()
    events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert "worker_consuming" in events
    assert "worker_stopped" in events or "worker_stopping" in events
    stderr = (tmp_path / "stderr.log").read_text()
    assert "worker_consuming" not in stderr, stderr
