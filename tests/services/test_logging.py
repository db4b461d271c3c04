"""Logs: one line per handled message with its context, JSON off a terminal, no passwords."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from leveret.actors import Actor, Context, handler
from leveret.schemas import Message
from leveret.services.logs import RedactSecrets
from leveret.services.redaction import redact
from leveret.services.testing import captured_logs, memory_broker
from tests.support import RABBIT_URL, ROOT


class Note(Message, topic="tests.logs.note"):
    text: str


class Notes(Actor, queue="notes"):
    @handler
    def on(self, msg: Note, ctx: Context) -> None:
        ctx.log.info("noting", text=msg.text)


def test_one_line_per_handled_message_and_handler_logs_carry_the_context() -> None:
    with memory_broker(Notes) as broker, captured_logs() as logs:
        message_id = Notes.send(Note(text="hi"))
        broker.join()
    noting = next(e for e in logs if e["event"] == "noting")
    handled = [e for e in logs if e["event"] == "message_handled"]
    assert len(handled) == 1
    for event in (noting, handled[0]):
        assert event["actor"] == "notes"
        assert event["topic"] == "tests.logs.note"
        assert event["message_id"] == message_id
        assert event["correlation_id"] == message_id
        assert event["attempt"] == 1
    assert handled[0]["outcome"] == "handled"
    assert handled[0]["duration_ms"] >= 0


def test_redaction_processor_hides_passwords_in_any_value() -> None:
    event = RedactSecrets()(None, "info", {"event": "x", "url": "amqps://u:p4ss@h:5671/v"})
    assert event["url"] == "amqps://u:***@h:5671/v"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("AMQP://guest:guest@localhost:5672/", "AMQP://guest:***@localhost:5672/"),
        ("amqp://app:p@ss/w#rd@rabbit:5672/prod", "amqp://app:***@rabbit:5672/prod"),
        ("connect to amqps://u:a:b%40c@h/v failed", "connect to amqps://u:***@h/v failed"),
        ("amqp://:only@h", "amqp://:***@h"),
        ("amqp://a:1@h1,amqp://b:2@h2", "amqp://a:***@h1,amqp://b:***@h2"),
        ("postgresql+psycopg://app:x,y@db/shop", "postgresql+psycopg://app:***@db/shop"),
        ("memory://", "memory://"),
        ("amqp://user@h/", "amqp://user@h/"),
    ],
)
def test_redaction_finds_every_password_whatever_it_holds(text: str, redacted: str) -> None:
    assert redact(text) == redacted


def test_redaction_reaches_nested_values() -> None:
    event = RedactSecrets()(
        None,
        "info",
        {"event": "x", "urls": ["amqp://u:one@h"], "conf": {"broker": ("amqp://u:two@h",)}},
    )
    assert event["urls"] == ["amqp://u:***@h"]
    assert event["conf"] == {"broker": ("amqp://u:***@h",)}


def test_standard_library_records_go_through_the_same_redaction() -> None:
    """pika, Django or the project's own `logging` calls: JSON lines, passwords hidden."""
    code = (
        "import logging\n"
        "from leveret.services.logs import configure_logging\n"
        "configure_logging('info', json=True)\n"
        "logging.getLogger('app').warning('broker %s', 'AMQP://u:S3cr#t/x@h:5672/')\n"
        "try:\n"
        "    raise RuntimeError('amqp://u:T0p@h')\n"
        "except RuntimeError:\n"
        "    logging.getLogger('app').exception('failed')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stderr.splitlines())
    assert first["event"] == "broker AMQP://u:***@h:5672/"
    assert first["logger"] == "app"
    assert "amqp://u:***@h" in second["exception"]
    assert "S3cr" not in result.stderr
    assert "T0p" not in result.stderr


def test_logs_are_json_lines_off_a_terminal_and_never_show_the_password(
    rabbit_url: str,
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leveret.services.cli",
            "demo",
            "--broker-url",
            rabbit_url,
            "--namespace",
            f"ltdemo{__import__('os').getpid()}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert {"broker_connected", "message_handled", "message_dead_lettered"} <= {
        e["event"] for e in events
    }
    password = RABBIT_URL.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert f":{password}@" not in result.stdout + result.stderr
    assert "3 messages handled" in result.stdout
