"""Schedules in a Django project: modules of the settings, entries in the database picked
up by the running leader without a restart, the admin, ``manage.py leveret_scheduler``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pytest_django.fixtures import Settings

from leveret.django.models import ScheduledMessage
from leveret.django.schedules import project_source
from leveret.services.scheduling import Scheduler, combined
from leveret.services.testing import MemoryBroker, captured_logs
from tests.django.plugin_actors import Tally
from tests.schedule_samples import Seconds
from tests.support import ROOT

pytestmark = [pytest.mark.django_db(transaction=True)]

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(autouse=True)
def _project(settings: Settings) -> None:
    settings.LEVERET = {
        "BROKER_URL": "memory://",
        "NAMESPACE": "schedules",
        "ACTORS": ["tests.django.plugin_actors"],
    }


@pytest.fixture
def leader() -> Iterator[tuple[Scheduler, MemoryBroker, Clock]]:
    """A leading scheduler of the project's entries (re-read at every step), in memory."""
    clock = Clock()
    broker = MemoryBroker(namespace="schedules")
    broker.declare(Tally)
    scheduler = Scheduler(
        combined([], project_source()),
        broker.transport.scheduling.backend(),
        namespace="schedules",
        clock=clock,
        reload_s=0,
    )
    assert scheduler.take_lead()
    yield scheduler, broker, clock
    scheduler.close()


def _row(**fields: object) -> ScheduledMessage:
    row = ScheduledMessage(
        name="db-notes",
        every_seconds=10,
        topic="tests.plugin.note",
        payload={"n": 7},
        actor="plugin.tally",
        **fields,
    )
    row.full_clean()
    row.save()
    return row


def test_database_entries_are_picked_up_changed_and_disabled_without_a_restart(
    leader: tuple[Scheduler, MemoryBroker, Clock],
) -> None:
    scheduler, broker, clock = leader
    clock.now += timedelta(seconds=10)
    assert scheduler.step() == 0  # no entry yet
    row = _row()
    assert scheduler.step() == 0  # noticed at 10: it runs from then on
    clock.now += timedelta(seconds=30)
    assert scheduler.step() == 3  # 20, 30, 40
    row.every_seconds = 20
    row.save()
    clock.now += timedelta(seconds=40)
    assert scheduler.step() == 2  # another interval: 60, 80
    row.enabled = False
    row.save()
    clock.now += timedelta(seconds=40)
    assert scheduler.step() == 0
    assert broker.pending(Tally) == 5


def test_an_invalid_row_is_logged_and_blocks_no_other(
    leader: tuple[Scheduler, MemoryBroker, Clock],
) -> None:
    scheduler, _broker, clock = leader
    _row()
    ScheduledMessage.objects.create(name="db-broken", cron="61 * * * *", topic="nope")
    scheduler.step()
    clock.now += timedelta(seconds=20)
    with captured_logs() as logs:
        assert scheduler.step() == 2
    invalid = [e for e in logs if e["event"] == "schedule_row_invalid"]
    assert invalid
    assert invalid[0]["schedule"] == "db-broken"


def test_the_admin_checks_an_entry_and_shows_its_next_runs() -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    add = "/admin/leveret/scheduledmessage/add/"
    form = {
        "name": "nightly-note",
        "enabled": "on",
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "topic": "tests.plugin.note",
        "payload": json.dumps({"n": 1}),
        "actor": "plugin.tally",
        "catch_up": "latest",
        "max_catch_up": "100",
    }
    refused = client.post(add, {**form, "cron": "30 25 * * *"})
    assert "bad cron expression" in refused.content.decode()
    refused = client.post(add, {**form, "payload": json.dumps({"n": "many"})})
    assert "payload" in refused.content.decode()
    saved = client.post(add, form)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    row = ScheduledMessage.objects.get(name="nightly-note")
    page = client.get(f"/admin/leveret/scheduledmessage/{row.pk}/change/").content.decode()
    assert "next runs" in page.lower()
    assert ":30:00+00:00" in page  # 02:30 Berlin in UTC


def test_leveret_scheduler_lists_the_schedules_of_the_settings_modules() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "django", "leveret_scheduler", "--list"),
            *("--settings", "tests.django.settings"),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LEVERET_TEST_SETTINGS": json.dumps(
                {
                    "BROKER_URL": "memory://",
                    "NAMESPACE": "schedules",
                    "SCHEDULES": ["tests.schedule_samples"],
                }
            ),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "tests-every-second: every 0:00:01, send to schedules.seconds" in result.stdout


CODE_ENTRY = "tests-every-second"  # tests/schedule_samples.py


def test_the_admin_refuses_a_name_a_schedule_of_the_code_uses(settings: Settings) -> None:
    """A database entry named like a code schedule is refused at save, the message naming
    the code's entry and its module; nothing is saved."""
    settings.LEVERET = {**settings.LEVERET, "SCHEDULES": ["tests.schedule_samples"]}
    client = Client()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    form = {
        "name": CODE_ENTRY,
        "enabled": "on",
        "every_seconds": "10",
        "timezone": "UTC",
        "topic": "tests.plugin.note",
        "payload": json.dumps({"n": 1}),
        "actor": "plugin.tally",
        "catch_up": "skip",
        "max_catch_up": "100",
    }
    refused = client.post("/admin/leveret/scheduledmessage/add/", form)
    assert refused.status_code == 200
    page = refused.content.decode()
    assert f"{CODE_ENTRY!r}" in page.replace("&#x27;", "'")
    assert "tests.schedule_samples" in page
    assert not ScheduledMessage.objects.exists()
    saved = client.post("/admin/leveret/scheduledmessage/add/", {**form, "name": "db-own"})
    assert saved.status_code == 302


def test_a_name_clash_is_logged_once_per_entry_not_at_every_reload(
    settings: Settings, leader: tuple[Scheduler, MemoryBroker, Clock]
) -> None:
    """A row written around the admin with a code schedule's name: the scheduler keeps
    the code's entry and logs ``schedule_name_taken`` once over ten reloads."""
    settings.LEVERET = {**settings.LEVERET, "SCHEDULES": ["tests.schedule_samples"]}
    scheduler, broker, clock = leader
    broker.declare(Seconds)
    ScheduledMessage.objects.create(
        name=CODE_ENTRY, every_seconds=10, topic="tests.plugin.note", payload={"n": 1}
    )
    with captured_logs() as logs:
        for _ in range(10):
            clock.now += timedelta(seconds=5)
            scheduler.step()
    taken = [e for e in logs if e["event"] == "schedule_name_taken"]
    assert [e["schedule"] for e in taken] == [CODE_ENTRY]
