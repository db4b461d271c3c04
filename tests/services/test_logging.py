"""Logs: one line per handled message with its context, JSON off a terminal, no passwords."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from leveret.actors import Actor, AsyncContext, Context, handler
from leveret.schemas import Message
from leveret.services.observability.logs import (
    RedactSecrets,
    StructuredFormatter,
    bind_message_fields,
    get_logger,
    merge_message_fields,
    unbind_message_fields,
)
from leveret.services.testing import captured_logs, memory_broker
from tests.support import RABBIT_URL, ROOT, run_python, wait_until


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


class QuietNotes(Actor, queue="quiet_notes"):
    @handler
    def on(self, msg: Note) -> None:
        structlog.get_logger("project").info("project_noting", text=msg.text)


def test_a_projects_own_structlog_chain_sees_the_messages_fields() -> None:
    """With structlog configured by the project (its own processors, merge_contextvars as
    structlog's default has), an event logged inside a handler carries the message's fields,
    and none leak into events logged after it."""
    seen: list[dict[str, Any]] = []

    def capture(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
        seen.append(dict(event))
        raise structlog.DropEvent

    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, capture],
        wrapper_class=structlog.BoundLogger,
        cache_logger_on_first_use=False,
    )
    try:
        with memory_broker(QuietNotes) as broker:
            message_id = QuietNotes.send(Note(text="hi"))
            broker.join()
        structlog.get_logger("project").info("after")
    finally:
        structlog.configure(**previous)
    noting, after = seen
    assert noting["event"] == "project_noting"
    assert noting["message_id"] == message_id
    assert noting["actor"] == "quiet_notes"
    assert "message_id" not in after


def test_merge_message_fields_adds_the_handled_messages_fields_to_a_projects_chain() -> None:
    """The cheaper processor for a project's own chain: the message's fields while it is
    handled (a field the event sets itself wins), nothing outside a handler."""
    token = bind_message_fields({"actor": "notes", "message_id": "m1"})
    try:
        event = merge_message_fields(None, "info", {"event": "x", "actor": "mine"})
    finally:
        unbind_message_fields(token)
    assert event == {"event": "x", "actor": "mine", "message_id": "m1"}
    assert merge_message_fields(None, "info", {"event": "y"}) == {"event": "y"}


class AsyncNotes(Actor, queue="async_notes"):
    @handler
    async def on(self, msg: Note, ctx: AsyncContext) -> None:
        await asyncio.sleep(0.01)  # the other messages' tasks run meanwhile
        ctx.log.info("noting", text=msg.text)


def test_async_handlers_running_at_once_log_each_their_own_message() -> None:
    with memory_broker(AsyncNotes) as broker, captured_logs() as logs:
        ids = {AsyncNotes.send(Note(text=f"t{n}")): f"t{n}" for n in range(5)}
        worker = broker.worker([AsyncNotes], concurrency=5)
        worker.start()
        try:
            wait_until(lambda: worker.stats.handled == 5, 10, "five handled")
        finally:
            worker.shutdown(5)
    noting = [e for e in logs if e["event"] == "noting"]
    assert {e["message_id"]: e["text"] for e in noting} == ids


def test_redaction_processor_hides_passwords_in_any_value() -> None:
    event = RedactSecrets()(None, "info", {"event": "x", "url": "amqps://u:p4ss@h:5671/v"})
    assert event["url"] == "amqps://u:***@h:5671/v"


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
        "from leveret.services.observability.logs import configure_logging\n"
        "configure_logging('info', json=True)\n"
        "logging.getLogger('app').warning('broker %s', 'AMQP://u:S3cr#t/x@h:5672/')\n"
        "try:\n"
        "    raise RuntimeError('amqp://u:T0p@h')\n"
        "except RuntimeError:\n"
        "    logging.getLogger('app').exception('failed')\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stderr.splitlines())
    assert first["event"] == "broker AMQP://u:***@h:5672/"
    assert first["logger"] == "app"
    assert "amqp://u:***@h" in second["exception"]
    assert "S3cr" not in result.stderr
    assert "T0p" not in result.stderr


def test_leveret_lines_written_without_a_record_match_the_formatters_and_hide_passwords() -> None:
    """Leveret's own events skip the record (written straight by its JSON handler) and are
    redacted only when the rendered line holds a URL: the line must be the formatter's."""
    code = (
        "import logging\n"
        "from leveret.services.observability.logs import (\n"
        "    bind_message_fields, configure_logging, get_logger\n"
        ")\n"
        "configure_logging('info', json=True)\n"
        "logging.getLogger('leveret.viarecord').addFilter(lambda record: True)\n"
        "bind_message_fields({'topic': 'amqp://w:W1re@h', 'attempt': 1})\n"
        "for name in ('leveret.direct', 'leveret.viarecord'):\n"
        "    log = get_logger(name).bind(bound='amqps://b:B0und@h/v')\n"
        "    log.info('seen amqp://e:Ev3nt@h', url='amqp://u:F1eld@h', n=3, plain='no url',\n"
        "             nested={'a': ['amqp://u:N3st@h']}, msg='renamed')\n"
        "    log.info('quiet', n=1)\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert len(lines) == 4
    for line in lines:
        del line["timestamp"]
        line["logger"] = line["logger"].rsplit(".", 1)[0]
    direct, direct_quiet, via_record, record_quiet = lines
    assert list(direct.items()) == list(via_record.items())
    assert list(direct_quiet.items()) == list(record_quiet.items())
    assert direct["event"] == "seen amqp://e:***@h"
    assert direct["topic"] == "amqp://w:***@h"
    assert direct["bound"] == "amqps://b:***@h/v"
    assert direct["url"] == "amqp://u:***@h"
    assert direct["nested"] == {"a": ["amqp://u:***@h"]}
    assert direct["msg_"] == "renamed"
    for secret in ("W1re", "B0und", "Ev3nt", "F1eld", "N3st"):
        assert secret not in result.stderr


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


def test_console_log_lines_escape_control_characters_from_the_wire() -> None:
    """On a terminal (console lines), a field from the wire (a topic, an error) can neither
    send escape sequences nor start a line of its own; a traceback keeps its lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StructuredFormatter(json=False))
    logger = logging.getLogger("leveret.tests.console")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        get_logger("leveret.tests.console").warning(
            "message_dead_lettered\x1b[2J",
            topic="t\x1b]0;title\x07\u202e",
            error="bad\n2026-01-01 [info     ] forged_line",
        )
        try:
            raise ValueError("x\x1b[31m")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, *traceback = stream.getvalue().rstrip("\n").split("\n")
    assert "\x1b" not in stream.getvalue()
    assert "\u202e" not in stream.getvalue()
    assert "forged_line" in first
    assert "t\\x1b]0;title\\x07\\u202e" in first
    assert any("Traceback" in line for line in traceback)
