"""Operator commands read the project's settings: leveret_worker, leveret_dlq,
leveret_declare; ``--help`` shows the values in force; nothing starts before the command
line is parsed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from pytest_django.fixtures import Settings

from leveret.django.registry import task_actors
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.django.plugin_actors import Complaint, Doubler, Grumpy, Tally
from tests.support import ROOT, LoggedProcess, run_python, running, wait_until

ACTORS_MODULE = "tests.django.plugin_actors"


def manage(*args: str, settings: dict[str, Any], **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m django ARGS --settings tests.django.settings`` with this LEVERET."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args, "--settings", "tests.django.settings"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LEVERET_TEST_SETTINGS": json.dumps(settings),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_help_shows_the_values_in_force_and_starts_nothing() -> None:
    settings = {
        "BROKER_URL": "amqp://guest:s3cret@127.0.0.1:5672/",
        "NAMESPACE": "helpns",
        "ACTORS": [ACTORS_MODULE],
        "RELAY_IN_WORKER": True,
        "CONSUMER_TIMEOUT_S": 600,
    }
    result = manage("leveret_worker", "--help", settings=settings)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())  # click wraps lines
    assert "Usage: manage.py leveret_worker" in help_text
    assert "In force: amqp://guest:***@127.0.0.1:5672/ (settings.LEVERET)" in help_text
    assert "In force: helpns (settings.LEVERET)" in help_text
    assert "In force: 600 (settings.LEVERET)" in help_text
    assert "--settings=MODULE" in help_text
    assert "s3cret" not in result.stdout + result.stderr
    assert "relay_started" not in result.stdout + result.stderr

    bad = manage("leveret_worker", "--no-such-option", settings=settings)
    assert bad.returncode == 2
    # Click's wording differs between releases (8.1: "No such option: --x").
    assert "No such option" in bad.stderr
    assert "--no-such-option" in bad.stderr
    assert "relay_started" not in bad.stdout + bad.stderr


@pytest.mark.usefixtures("rabbit_url")
def test_leveret_dlq_looks_in_the_project_namespace(
    rabbit_broker: RabbitBroker, namespace: str
) -> None:
    rabbit_broker.declare(Grumpy)
    with running(rabbit_broker, Grumpy, threads=1):
        message_id = Grumpy.send(Complaint(text="cold soup"))
        wait_until(lambda: rabbit_broker.dead_letter_count(Grumpy) == 1, 20, "the dead letter")
    settings = {"BROKER_URL": rabbit_broker.url, "NAMESPACE": namespace}

    listed = manage("leveret_dlq", "list", Grumpy.queue, settings=settings)
    assert listed.returncode == 0, listed.stderr
    assert message_id in listed.stdout
    assert "1 dead letter(s) shown" in listed.stdout

    shown = manage("leveret_dlq", "show", Grumpy.queue, message_id, settings=settings)
    assert shown.returncode == 0, shown.stderr
    assert "cold soup" in shown.stdout

    helped = manage("leveret_dlq", "list", "--help", settings=settings)
    assert f"In force: {namespace} (settings.LEVERET)" in " ".join(helped.stdout.split())

    # leveret_status: the project's namespace, and its actors' queues with no worker running.
    with_actors = {**settings, "ACTORS": ["tests.django.plugin_actors"]}
    status = manage(
        "leveret_status", "--json", "--no-management", "--wait", "0", settings=with_actors
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["namespace"] == namespace
    queues = {queue["actor"]: queue for queue in report["queues"]}
    assert queues[Grumpy.queue]["dead_letters"] == 1
    assert report["workers"] == []


@pytest.mark.django_db
def test_leveret_declare_declares_the_project_actors(
    rabbit_broker: RabbitBroker, namespace: str, settings: Settings
) -> None:
    settings.LEVERET = {
        "BROKER_URL": rabbit_broker.url,
        "TEST_BROKER_URL": None,  # this test is about the real broker
        "NAMESPACE": namespace,
        "ACTORS": [ACTORS_MODULE],
    }
    out = io.StringIO()
    call_command("leveret_declare", stdout=out)
    # declared here too so that the fixture deletes them
    rabbit_broker.declare(Tally, Grumpy, Doubler, *task_actors())
    assert f"declared {namespace}.{Tally.queue} <- tests.plugin.note" in out.getvalue()
    assert rabbit_broker.message_count(naming.queue_name(namespace, Grumpy.queue)) == 0


def test_reload_restarts_the_worker_when_a_python_file_changes(tmp_path: Path) -> None:
    """`leveret_worker --reload`: a change to an actor module starts a new worker (after the
    old one drained) that runs the new code; SIGTERM stops both."""
    module = tmp_path / "reloadable_actors.py"
    source = (
        "import sys\n"
        "from leveret import Actor, Message, handler\n"
        "print('reloadable version {version}', file=sys.stderr, flush=True)\n"
        "class Tick(Message, topic='tests.reload.tick'):\n"
        "    n: int\n"
        "class Ticks(Actor, queue='reload.ticks'):\n"
        "    time_limit_s = 5\n"
        "    @handler\n"
        "    def on(self, msg: Tick) -> None: ...\n"
    )
    module.write_text(source.format(version=1))
    process = LoggedProcess(
        [
            *(sys.executable, "-m", "django", "leveret_worker", "--reload"),
            *("--reload-dir", str(tmp_path), "--threads", "1", "--log-format", "json"),
            *("--settings", "tests.django.settings"),
        ],
        tmp_path / "worker.log",
        env={
            "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}",
            "LEVERET_TEST_SETTINGS": json.dumps(
                {"BROKER_URL": "memory://", "ACTORS": ["reloadable_actors"]}
            ),
        },
    )
    try:
        wait_until(lambda: "reloadable version 1" in process.log(), 30, "the first worker")
        process.wait_consuming()
        module.write_text(source.format(version=2))
        wait_until(lambda: "reloadable version 2" in process.log(), 30, "the new code to run")
        wait_until(lambda: process.log().count("worker_consuming") == 2, 30, "it to consume")
        log = process.log()
        assert "worker_code_changed" in log
        assert "worker_stopped" in log  # the first worker stopped gracefully
        process.signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.log()
    finally:
        process.stop()


@pytest.mark.parametrize("command", ["status", "dlq list tally"])
def test_manage_py_commands_say_the_broker_is_down_in_one_line_as_leveret_does(
    command: str,
) -> None:
    """With the broker unreachable, ``manage.py leveret_<command>`` prints the one line
    ``leveret <command>`` prints, and exits with the same code: no traceback."""
    dead = "amqp://guest:guest@127.0.0.1:1/"
    name, *rest = command.split()
    ours = manage(
        f"leveret_{name}",
        *rest,
        settings={"BROKER_URL": dead, "NAMESPACE": "down", "ACTORS": [ACTORS_MODULE]},
    )
    theirs = run_python("-m", "leveret", name, *rest, "--broker-url", dead, "--namespace", "down")
    assert "Traceback" not in ours.stderr, ours.stderr
    assert theirs.returncode == 1, theirs.stderr
    assert ours.returncode == theirs.returncode
    assert ours.stderr.strip().splitlines() == theirs.stderr.strip().splitlines()
    assert len(ours.stderr.strip().splitlines()) == 1, ours.stderr
