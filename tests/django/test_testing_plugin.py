"""Tests behave as production: Leveret's pytest plugin and `project_memory_broker`.

Every publishing path (`leveret.publish`, `Actor.send`, the `leveret.django` helpers) waits
for the commit and sends nothing after a rollback, in tests as in production; the outbox
is relayed; settings changed by a test are honoured; the eager mode runs handlers at commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from django.db import transaction
from django.test import TestCase, override_settings
from pytest_django.fixtures import Settings as SettingsWrapper

import leveret
from leveret.actors import configure
from leveret.actors.actor import Actor
from leveret.django import publish as django_publish
from leveret.django import send as django_send
from leveret.django.apps import install
from leveret.django.models import OutboxMessage
from leveret.django.project import forget_project_broker, project_broker
from leveret.django.testing import project_memory_broker
from leveret.services.testing import MemoryBroker, memory_broker
from tests.django.plugin_actors import Complaint, Doubled, Doubler, Grumpy, Note, Tally

pytestmark = [pytest.mark.django_db(transaction=True)]  # on-commit needs real commits

ACTORS_MODULE = "tests.django.plugin_actors"


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def _clean_tally() -> Iterator[None]:
    Tally.seen = []
    yield
    Tally.seen = []


@pytest.fixture
def app_installed() -> Iterator[None]:
    """What the app does when Django is ready (this suite starts each test without it)."""
    install()
    yield
    configure(None)


@pytest.fixture
def leveret_actors() -> list[type[Actor]]:
    """The plugin's fixtures declare these (the project's ACTORS are empty here)."""
    return [Tally, Grumpy, Doubler]


def _publish_every_way(first: int) -> None:
    leveret.publish(Note(n=first))
    Tally.send(Note(n=first + 1))
    django_publish(Note(n=first + 2))
    django_send(Tally, Note(n=first + 3))


def test_a_rollback_sends_nothing_on_any_path(leveret_broker: MemoryBroker) -> None:
    with contextlib.suppress(Boom), transaction.atomic():
        _publish_every_way(1)
        raise Boom
    leveret_broker.join()
    assert Tally.seen == []


def test_memory_broker_in_a_django_project_follows_the_transaction() -> None:
    """The helper tests used before the plugin: on main it delivered rolled-back messages."""
    with memory_broker(Tally) as broker:
        with contextlib.suppress(Boom), transaction.atomic():
            leveret.publish(Note(n=1))
            Tally.send(Note(n=2))
            raise Boom
        broker.join()
    assert Tally.seen == []


def test_a_commit_sends_each_message_once_after_the_commit(leveret_broker: MemoryBroker) -> None:
    with transaction.atomic():
        _publish_every_way(1)
        assert leveret_broker.pending(Tally) == 0
    assert leveret_broker.pending(Tally) == 4
    leveret_broker.join()
    assert sorted(Tally.seen) == [1, 2, 3, 4]


def test_the_outbox_setting_changed_by_a_test_is_honoured(
    leveret_broker: MemoryBroker, settings: SettingsWrapper
) -> None:
    settings.LEVERET = {**settings.LEVERET, "OUTBOX": True}
    with transaction.atomic():
        message_id = Tally.send(Note(n=7))
    row = OutboxMessage.objects.get(message_id=message_id)
    assert row.sent_at is None
    assert leveret_broker.pending(Tally) == 0
    leveret_broker.join()  # relays the committed rows, as the relay would
    assert Tally.seen == [7]
    row.refresh_from_db()
    assert row.sent_at is not None


def test_a_rolled_back_outbox_row_is_never_relayed(
    leveret_broker: MemoryBroker, settings: SettingsWrapper
) -> None:
    settings.LEVERET = {**settings.LEVERET, "OUTBOX": True}
    with contextlib.suppress(Boom), transaction.atomic():
        Tally.send(Note(n=1))
        raise Boom
    leveret_broker.join()
    assert Tally.seen == []
    assert not OutboxMessage.objects.exists()


def test_eager_handles_at_commit_not_before(leveret_eager: MemoryBroker) -> None:
    with transaction.atomic():
        _publish_every_way(1)
        assert Tally.seen == []
    assert sorted(Tally.seen) == [1, 2, 3, 4]


def test_eager_outside_a_transaction_handles_before_the_call_returns(
    leveret_eager: MemoryBroker,
) -> None:
    Tally.send(Note(n=5))
    assert Tally.seen == [5]


def test_eager_with_the_outbox_handles_the_rows_at_commit(
    leveret_eager: MemoryBroker, settings: SettingsWrapper
) -> None:
    settings.LEVERET = {**settings.LEVERET, "OUTBOX": True}
    with transaction.atomic():
        message_id = Tally.send(Note(n=9))
        assert Tally.seen == []
    assert Tally.seen == [9]
    assert OutboxMessage.objects.get(message_id=message_id).sent_at is not None


def test_an_ask_inside_a_transaction_is_answered_at_once(leveret_eager: MemoryBroker) -> None:
    """An ask cannot wait for the commit: it goes out (and is answered) at the call, while
    a send beside it still waits for the commit."""
    with transaction.atomic():
        Tally.send(Note(n=1))
        assert Doubler.ask(Note(n=21), timeout=5) == Doubled(n=42)
        assert Tally.seen == []
    assert Tally.seen == [1]


def test_eager_raises_what_dead_letters_a_message(leveret_eager: MemoryBroker) -> None:
    """After its retry, the handler's error surfaces where the message was published."""
    with pytest.raises(RuntimeError, match="no: late"):
        Grumpy.send(Complaint(text="late"))
    (letter,) = leveret_eager.dead_letters(Grumpy)
    assert letter.envelope().attempt == 2


@pytest.mark.usefixtures("app_installed")
def test_without_a_fixture_tests_publish_to_the_test_broker_not_the_real_one(
    settings: SettingsWrapper,
) -> None:
    """BROKER_URL names a broker that is not there; under tests TEST_BROKER_URL
    (memory:// by default) is used instead, built from the settings in force."""
    settings.LEVERET = {
        "BROKER_URL": "amqp://guest:guest@127.0.0.1:1/",
        "NAMESPACE": "plugin-tests",
        "ACTORS": [ACTORS_MODULE],
    }
    broker = project_broker()
    assert isinstance(broker, MemoryBroker)
    assert broker.namespace == "plugin-tests"
    broker.declare(Tally)
    with transaction.atomic():
        leveret.publish(Note(n=3))
    broker.join()
    assert Tally.seen == [3]


def test_a_namespace_change_builds_a_new_project_broker(settings: SettingsWrapper) -> None:
    first = project_broker()
    settings.LEVERET = {**settings.LEVERET, "NAMESPACE": "elsewhere"}
    second = project_broker()
    assert second is not first
    assert second.namespace == "elsewhere"


@pytest.mark.usefixtures("app_installed")
def test_a_test_leaves_messages_behind(settings: SettingsWrapper) -> None:
    """With the next test: the plugin gives each test an empty project broker."""
    settings.LEVERET = {**settings.LEVERET, "ACTORS": [ACTORS_MODULE]}
    project_broker().declare(Tally)
    Tally.send(Note(n=1))
    assert project_broker().pending(Tally) == 1  # type: ignore[attr-defined]


def test_the_next_test_starts_empty(settings: SettingsWrapper) -> None:
    settings.LEVERET = {**settings.LEVERET, "ACTORS": [ACTORS_MODULE]}
    broker = project_broker()
    assert isinstance(broker, MemoryBroker)
    assert broker.queues == {} or broker.pending() == 0
    forget_project_broker()


@override_settings(
    LEVERET={"BROKER_URL": "memory://", "NAMESPACE": "testcase", "ACTORS": [ACTORS_MODULE]}
)
class DjangoTestCaseTests(TestCase):
    """The same in Django's `TestCase`, which never commits: its on-commit callbacks run
    with ``captureOnCommitCallbacks(execute=True)``."""

    databases = {"default"}

    def setUp(self) -> None:
        Tally.seen = []
        self.broker = self.enterContext(project_memory_broker())

    def test_commit_sends_and_join_handles(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            Tally.send(Note(n=1))
            leveret.publish(Note(n=2))
            assert self.broker.pending(Tally) == 0
        self.broker.join()
        assert sorted(Tally.seen) == [1, 2]
        assert self.broker.namespace == "testcase"

    def test_callbacks_not_run_send_nothing(self) -> None:
        with transaction.atomic():
            Tally.send(Note(n=1))
        self.broker.join()
        assert Tally.seen == []


def test_the_fixture_runs_the_projects_schedules(
    settings: SettingsWrapper, leveret_actors: list[type[Actor]]
) -> None:
    """``leveret_broker`` (and `project_memory_broker`) run the schedules of
    ``LEVERET["SCHEDULES"]`` on the virtual clock, as the project's scheduler would."""
    from tests.schedule_samples import Seconds

    settings.LEVERET = {**settings.LEVERET, "SCHEDULES": ["tests.schedule_samples"]}
    with project_memory_broker(Seconds) as broker:
        broker.advance_clock(2)
        assert [tick.schedule for tick in broker.sent_ticks] == ["tests-every-second"] * 2
        assert broker.pending(Seconds) == 2
