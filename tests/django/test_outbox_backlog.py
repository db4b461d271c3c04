"""An outbox backlog is seen: rows waiting longer than ``OUTBOX_WARN_AFTER_S`` (and rows the
relay gave up on) are warned about by ``manage.py check``, ``manage.py leveret_status`` and
the mounted dashboard; the check stays quick and quiet when the database is unreachable."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.test import Client
from shop.messages import OrderPlaced

from leveret.django.models import OutboxMessage
from leveret.django.project import forget_project_broker
from leveret.services import RabbitBroker
from tests.support import RABBIT_URL, run_python

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])


@pytest.fixture
def outbox_on(settings: Any, db_alias: str, rabbit_broker: RabbitBroker) -> Iterator[str]:
    """The project uses the outbox on `db_alias`, warns after a minute, and publishes to
    the test's namespace on the real RabbitMQ."""
    settings.LEVERET = {
        "BROKER_URL": RABBIT_URL,
        "TEST_BROKER_URL": RABBIT_URL,
        "NAMESPACE": rabbit_broker.namespace,
        "OUTBOX": True,
        "OUTBOX_WARN_AFTER_S": 60,
        "DATABASE": db_alias,
    }
    yield db_alias
    forget_project_broker()


def _row(rabbit_broker: RabbitBroker, alias: str, *, age_s: float, failed: bool = False) -> None:
    row = OutboxMessage.of(rabbit_broker.prepare(OrderPlaced(order_id=1)), "g")
    row.created_at = datetime.now(UTC) - timedelta(seconds=age_s)
    if failed:
        row.failed_at = datetime.now(UTC)
        row.last_error = "refused"
    row.save(using=alias)


def _leveret_checks() -> dict[str, str]:
    return {message.id or "": message.msg for message in run_checks(tags=["leveret"])}


def test_check_warns_of_rows_waiting_longer_than_the_bound(
    outbox_on: str, rabbit_broker: RabbitBroker
) -> None:
    """Two rows older than OUTBOX_WARN_AFTER_S: W005 says how many, how old, and what to
    run; a young row alone says nothing."""
    _row(rabbit_broker, outbox_on, age_s=5)
    assert "leveret.W005" not in _leveret_checks()
    _row(rabbit_broker, outbox_on, age_s=600)
    _row(rabbit_broker, outbox_on, age_s=300)
    found = run_checks(tags=["leveret"])
    (warning,) = [m for m in found if m.id == "leveret.W005"]
    assert "2 outbox message(s)" in warning.msg
    assert "600 s" in warning.msg or "10 min" in warning.msg
    assert "leveret_relay" in (warning.hint or "")


def test_check_warns_of_failed_rows(outbox_on: str, rabbit_broker: RabbitBroker) -> None:
    """A row the relay gave up on is W006, with the command that lists and retries it."""
    _row(rabbit_broker, outbox_on, age_s=5, failed=True)
    found = run_checks(tags=["leveret"])
    (warning,) = [m for m in found if m.id == "leveret.W006"]
    assert "1 outbox message(s)" in warning.msg
    assert "--retry-failed" in (warning.hint or "")


def test_leveret_status_shows_the_backlog(
    outbox_on: str,
    rabbit_broker: RabbitBroker,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``manage.py leveret_status`` lists the backlog among its warnings."""
    from leveret.django.commandline import CONSUMER_TIMEOUT_ENV
    from leveret.django.management.commands.leveret_status import Command
    from leveret.services import config

    for name in (config.BROKER_URL_ENV, config.NAMESPACE_ENV, CONSUMER_TIMEOUT_ENV):
        monkeypatch.setenv(name, "")  # the command sets them: put back at teardown

    _row(rabbit_broker, outbox_on, age_s=600)
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "leveret_status", "--wait", "0", "--no-management"])
    assert exited.value.code in (0, None)
    out = capsys.readouterr().out
    assert "WARNINGS: 1" in out
    assert "1 outbox message(s) have waited" in out


def test_the_mounted_dashboard_shows_the_backlog(
    outbox_on: str, rabbit_broker: RabbitBroker
) -> None:
    """The dashboard in the Django project lists the backlog among its warnings."""
    _row(rabbit_broker, outbox_on, age_s=600)
    client = Client()
    client.force_login(User.objects.create_user("ops", "o@example.com", "pw", is_staff=True))
    overview = client.get("/leveret/api/overview")
    assert overview.status_code == 200
    kinds = {w["kind"]: w["message"] for w in overview.json()["warnings"]}
    assert "outbox_backlog" in kinds
    assert "1 outbox message(s) have waited" in kinds["outbox_backlog"]


def _check_in_a_process(port: int) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        "LEVERET_TEST_PG_PORT": str(port),
        "LEVERET_TEST_SETTINGS": json.dumps(
            {"BROKER_URL": "memory://", "NAMESPACE": "backlog", "OUTBOX": True}
        ),
    }
    started = time.monotonic()
    done = run_python("-m", "django", "check", "--settings", "tests.django.settings", env=env)
    return done, time.monotonic() - started


@pytest.mark.parametrize("how", ["refused", "silent"])
def test_check_is_quick_and_quiet_when_the_database_is_unreachable(how: str) -> None:
    """``manage.py check`` with the database refusing connections, or accepting them and
    never answering: exit 0 within the check's bound, no traceback."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    port = silent.getsockname()[1]
    if how == "refused":
        silent.close()
    _done, startup_s = _check_in_a_process(5432)  # the database there: how long it takes now
    try:
        done, elapsed = _check_in_a_process(port)
    finally:
        silent.close()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "System check identified no issues" in done.stdout
    # The check's own bound, past what the check takes with the database there (several
    # seconds on a loaded machine).
    assert elapsed < startup_s + 10, (elapsed, startup_s)
