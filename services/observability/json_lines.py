"""Leveret's JSON log lines, rendered fast: one line per handled message is the hot path.

`dumps` renders an event with orjson (the standard library's json when it cannot);
`process_fields` are what every line says of the process that wrote it; `DirectJSONWriter`
writes Leveret's own events as lines without making a `logging.LogRecord`, when its handler
is the only one that would receive them (docs/performance.md tells what that saves).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from leveret.services.config import WORKER_SLOT_ENV
from leveret.services.observability.redaction import RedactSecrets
from leveret.services.observability.stderr import StderrHandler

_REDACT = RedactSecrets()


class DirectJSONWriter:
    """Writes Leveret's own events as JSON lines to `handler` without making a record.

    Used while `handler` (installed by `configure_logging` with JSON lines) is the only
    handler a Leveret record would reach: the line is the one `StructuredFormatter` would
    write (same fields, same order), rendered with orjson when it is installed.
    """

    def __init__(self, handler: StderrHandler) -> None:
        self.handler = handler
        self._root = logging.getLogger()
        self._second = -1
        self._prefix = ""

    def reaches(self, logger: logging.Logger) -> bool:
        """Whether a record of `logger` would reach `handler` and nothing else."""
        handler = self.handler
        if handler.filters or handler.level > logger.getEffectiveLevel():
            return False
        current: logging.Logger | None = logger
        while current is not None:
            if current.filters:
                return False
            if current is self._root:
                return current.handlers == [handler]
            if current.handlers or not current.propagate:
                return False
            current = current.parent
        return False

    def write_event(self, level: int, name: str, data: dict[str, Any]) -> None:
        """Write one event: `data` holds ``event`` first, then the fields (not yet redacted).

        The line is rendered first and redacted only when it holds a URL: the common line
        costs one search of its bytes, not a look at every value.
        """
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        for key, value in process_fields.items():
            data.setdefault(key, value)
        data["level"] = LEVEL_NAMES.get(level) or logging.getLevelName(level).lower()
        data["logger"] = name
        data["timestamp"] = f"{self._prefix}.{nanoseconds // 1000:06d}Z"
        line = dumps(data)
        if "://" in line:  # a URL somewhere, maybe with a password: redact each value
            line = dumps(_REDACT(None, "", data))  # type: ignore[arg-type]
        self.handler.write_line(line, urgent=level >= logging.WARNING)


LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def _own_process_fields() -> dict[str, Any]:
    """What every line says of the process that wrote it: its pid, and its slot when it is
    a child of ``leveret worker --processes N`` (the children share one standard error)."""
    fields: dict[str, Any] = {"process": os.getpid()}
    slot = os.environ.get(WORKER_SLOT_ENV, "")
    if slot.isdigit():
        fields["slot"] = int(slot)
    return fields


process_fields = _own_process_fields()
"""Fields every line carries (`_own_process_fields`), renewed in a forked child."""


def _fallback(value: Any) -> Any:
    """How a value JSON cannot hold is written (as structlog's JSONRenderer does)."""
    structured = getattr(value, "__structlog__", None)
    return structured() if callable(structured) else repr(value)


def _json_dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, default=_fallback)


try:
    import orjson

    def dumps(data: dict[str, Any]) -> str:
        """`data` as one JSON line (a value JSON cannot hold as its ``repr``)."""
        try:
            return orjson.dumps(data, default=_fallback).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int over 64 bits
            return _json_dumps(data)

except ImportError:  # pragma: no cover - orjson is a dependency; kept working without it
    dumps = _json_dumps


def _after_fork_in_child() -> None:
    # In place: the formatter and the writer hold this dict.
    process_fields.clear()
    process_fields.update(_own_process_fields())


os.register_at_fork(after_in_child=_after_fork_in_child)
