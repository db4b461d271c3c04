"""Log records rendered as lines: `StructuredFormatter`, for Leveret's records and any library's.

`event_of` reads a record as a structured event (the message as ``event``, the fields given
as ``extra``); the formatter adds the process, level, logger and time, redacts every URL's
password and writes one JSON line or one console line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import structlog

from leveret.services.observability.json_lines import dumps, process_fields
from leveret.services.observability.redaction import RedactSecrets, printable

# Attributes every LogRecord has: a field of the same name would make `logging` raise.
RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_REDACT = RedactSecrets()


def event_of(record: logging.LogRecord) -> dict[str, Any]:
    """A record as a structured event: ``event`` (the message), the fields given as
    ``extra`` (Leveret's events carry theirs so), ``level`` and ``logger``."""
    event: dict[str, Any] = {"event": record.getMessage()}
    for key, value in vars(record).items():
        if key not in RECORD_ATTRIBUTES:
            event[key] = value
    event["level"] = record.levelname.lower()
    event["logger"] = record.name
    return event


class StructuredFormatter(logging.Formatter):
    """Renders every record, Leveret's and any library's, as one JSON line or console line.

    The line holds the message as ``event``, every field given as ``extra`` (Leveret's
    events carry theirs so), ``process`` (the pid of the process that wrote it) and, in a
    child of ``leveret worker --processes N``, its ``slot``, ``level``, ``timestamp`` (UTC),
    ``logger`` and, if any, the formatted ``exception``; URL passwords are redacted.
    Usable in Django's ``LOGGING``::

        "formatters": {
            "structured": {"()": "leveret.services.observability.logs.StructuredFormatter"},
        }

    Args:
        json: JSON lines if True, console lines if False; by default JSON unless standard
            error is a terminal.
    """

    def __init__(self, json: bool | None = None) -> None:
        super().__init__()
        if json is None:
            json = not sys.stderr.isatty()
        self.json = json
        self._render: Any = (
            structlog.processors.JSONRenderer()
            if json
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        )

    def format(self, record: logging.LogRecord) -> str:
        """The record as one rendered line."""
        event = event_of(record)
        level, logger = event.pop("level"), event.pop("logger")
        event.setdefault("process", record.process)  # the fields first, as `DirectJSONWriter`
        for key, value in process_fields.items():
            event.setdefault(key, value)
        event["level"], event["logger"] = level, logger
        event["timestamp"] = datetime.fromtimestamp(record.created, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exception"] = record.exc_text
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        redacted = _REDACT(None, level, event)
        if self.json:  # JSON escapes every control character itself
            return dumps(dict(redacted))
        line: str = self._render(None, level, _printable(redacted))
        return line


def _printable(event: MutableMapping[str, Any]) -> dict[str, Any]:
    """The event's text with control and invisible characters escaped, for a console line:
    a value from the wire (a topic, an error) can then neither send escape sequences to the
    terminal nor start a line of its own. Tracebacks keep their lines."""
    return {
        key: (
            printable(value, keep_newlines=key in _MULTILINE) if isinstance(value, str) else value
        )
        for key, value in event.items()
    }


_MULTILINE = frozenset(("exception", "stack"))
