"""Logs: one line per handled message with its context, JSON off a terminal, no passwords."""

from __future__ import annotations

import json
import subprocess
import sys

import structlog

from actors import Actor, Context, handler
from schemas import Message
from services.logs import RedactSecrets
from services.testing import memory_broker
from tests.support import RABBIT_URL, ROOT


class Note(Message, topic="tests.logs.note"):
    text: str


class Notes(Actor, queue="notes"):
    @handler
    def on(self, msg: Note, ctx: Context) -> None:
        structlog.get_logger("user.code").info("noting", text=msg.text)


def test_one_line_per_handled_message_and_handler_logs_carry_the_context() -> None:
    with (
        memory_broker(Notes) as broker,
        structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs,
    ):
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


def test_logs_are_json_lines_off_a_terminal_and_never_show_the_password(
    rabbit_url: str,
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
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
