"""Logging: Leveret's events are standard-library log records, with their structure kept.

Leveret logs with structlog's API (``log.warning("message_lost_after_commit", topic=…)``)
and every event becomes a `logging.LogRecord` of a logger under ``leveret`` (such as
``leveret.broker``): the event name is the record's message, each field one of its
attributes (the ``extra`` of `logging`), so the project's own logging configuration
(Django's ``LOGGING``, Sentry, a JSON formatter) receives, filters and ships them like any
other record. Levels are the standard library's: ``logging.getLogger("leveret")`` decides.

Passwords never reach a record: every URL in the fields loses its password before the
record is made (`RedactSecrets`), and `StructuredFormatter` redacts the records of other
libraries too.

A process Leveret runs by itself (``leveret worker``, the relay, the CLI) calls
`configure_logging`, which adds one handler (JSON lines off a terminal, console on one) to
the root logger, unless the project configured root handlers already: those are never
removed.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

import structlog
from structlog.typing import FilteringBoundLogger

from leveret.schemas.errors import ConfigurationError
from leveret.services.config import WORKER_SLOT_ENV
from leveret.services.observability.redaction import printable, redact, redact_value

ROOT_LOGGER = "leveret"
"""Every logger of Leveret is below this one."""

# Attributes every LogRecord has: a field of the same name would make `logging` raise.
RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_LOG_KWARGS = frozenset(("exc_info", "stack_info", "stacklevel"))


class RedactSecrets:
    """Processor that replaces the password of every URL in the event's values with ``***``.

    Strings anywhere in the event are redacted: nested in dicts, lists and tuples too, in
    the event's message and in a formatted traceback.
    """

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Redact every value of the event."""
        for key, value in event_dict.items():
            if isinstance(value, str):
                if "://" in value:  # the common case costs one search, no call
                    event_dict[key] = redact(value)
            elif value is not None and not isinstance(value, _PLAIN):
                event_dict[key] = redact_value(value)
        return event_dict


_PLAIN = (int, float)  # bool is an int: nothing to redact in numbers
_REDACT = RedactSecrets()
# structlog's context variables, by name: empty until the first bind (collecting them looks
# at every context variable of the context, so it is skipped while there is none). A private
# name of structlog's, read on purpose: structlog has no public way to learn whether anything
# is bound but `get_contextvars()` itself (~270 ns an event, 7% of a JSON line). Should
# structlog drop the name, every event merges (None below). See docs/performance.md.
_STRUCTLOG_VARS = getattr(structlog.contextvars, "_CONTEXT_VARS", None)

_message_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "leveret_message_fields", default=None
)
"""The fields of the message being handled (actor, topic, message_id…), set by the worker
for the time of its handler: one context variable, not five of structlog's."""


def bind_message_fields(fields: dict[str, Any]) -> contextvars.Token[dict[str, Any] | None]:
    """Add `fields` to every event logged in this context until `unbind_message_fields`.

    The worker's own binding around each handler: Leveret's loggers (and structlog's
    ``get_logger()`` when Leveret configured structlog) merge them into each event; a
    project's own structlog chain gets them from `merge_message_fields`, or from
    structlog's ``merge_contextvars`` (the worker binds those too when the project
    configured structlog itself).
    """
    return _message_fields.set(fields)


def unbind_message_fields(token: contextvars.Token[dict[str, Any] | None]) -> None:
    """Undo `bind_message_fields`."""
    _message_fields.reset(token)


def merge_message_fields(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the handled message's fields, for a project's own chain."""
    fields = _message_fields.get()
    if fields:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


def leveret_owns_structlog() -> bool:
    """Whether structlog hands events to Leveret's logger (no chain of the project's own)."""
    return not structlog.is_configured() or structlog.get_config()["wrapper_class"] is LeveretLogger


class LeveretLogger(structlog.BoundLoggerBase):
    """structlog's bound-logger API (``info``, ``warning``…, ``bind``) over a standard
    library logger: each event becomes one `logging.LogRecord` of that logger.

    Built for the hot path (one event per handled message): below the logger's level an
    event costs one level check; above it, the record is made directly (no processor
    chain, no frame walk), naming the line that logged (``pathname``, ``lineno``,
    ``funcName``), with the context of `structlog.contextvars` and the bound values as
    fields, every URL's password redacted.
    """

    _logger: logging.Logger

    def _emit(self, level: int, event: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        if args:  # structlog's stdlib loggers format "%s"-style positional arguments
            event = event % args
        exc_info = stack_info = None
        if not _LOG_KWARGS.isdisjoint(fields):
            exc_info = fields.pop("exc_info", None)
            stack_info = bool(fields.pop("stack_info", False))
            fields.pop("stacklevel", None)
        message = _message_fields.get()
        direct = _direct
        if direct is not None and not exc_info and not stack_info and direct.reaches(logger):
            # Only Leveret's own JSON handler would see the record: write its line directly,
            # with the fields in the order the formatter would write them.
            data: dict[str, Any] = {"event": event}
            if message:
                data.update(message)
            if _STRUCTLOG_VARS is None or _STRUCTLOG_VARS:  # structlog's may hold something
                data.update(structlog.contextvars.get_contextvars())
            data.update(self._context)
            data.update(fields)
            if not RECORD_ATTRIBUTES.isdisjoint(data):
                data = _renamed(data)
            direct.write_event(level, logger.name, data)
            return
        if message is None:
            merged = structlog.contextvars.get_contextvars()
        else:
            merged = dict(message)
            merged.update(structlog.contextvars.get_contextvars())
        merged.update(self._context)
        merged.update(fields)
        _REDACT(None, "", merged)
        # The common case has no field to rename.
        extra = merged if RECORD_ATTRIBUTES.isdisjoint(merged) else _renamed(merged)
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        elif not exc_info:
            exc_info = None
        caller = sys._getframe(2)  # the line that called info(), warning()…
        code = caller.f_code
        record = logger.makeRecord(
            logger.name,
            level,
            code.co_filename,
            caller.f_lineno,
            event,
            (),
            exc_info,
            code.co_name,
            extra,
            _stack(caller) if stack_info else None,
        )
        logger.handle(record)

    def debug(self, event: str, *args: Any, **fields: Any) -> None:
        """Log `event` at debug level, with `fields`."""
        self._emit(logging.DEBUG, event, args, fields)

    def info(self, event: str, *args: Any, **fields: Any) -> None:
        """Log `event` at info level, with `fields`."""
        self._emit(logging.INFO, event, args, fields)

    def warning(self, event: str, *args: Any, **fields: Any) -> None:
        """Log `event` at warning level, with `fields`."""
        self._emit(logging.WARNING, event, args, fields)

    warn = warning

    def error(self, event: str, *args: Any, **fields: Any) -> None:
        """Log `event` at error level, with `fields` (``exc_info=`` for a traceback)."""
        self._emit(logging.ERROR, event, args, fields)

    def critical(self, event: str, *args: Any, **fields: Any) -> None:
        """Log `event` at critical level, with `fields`."""
        self._emit(logging.CRITICAL, event, args, fields)

    fatal = critical

    def exception(self, event: str, *args: Any, **fields: Any) -> None:
        """Log `event` at error level with the exception being handled."""
        fields.setdefault("exc_info", True)
        self._emit(logging.ERROR, event, args, fields)


def _renamed(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with ``_`` after each name a `logging.LogRecord` has already (``msg_``)."""
    return {(f"{key}_" if key in RECORD_ATTRIBUTES else key): v for key, v in fields.items()}


def _stack(frame: Any) -> str:
    import traceback

    return "Stack (most recent call last):\n" + "".join(traceback.format_stack(frame)).rstrip()


Logger: TypeAlias = FilteringBoundLogger
"""The logger Leveret hands out (`get_logger`, `Context.log`): structlog's bound logger,
with ``debug``/``info``/``warning``/``error``/``exception`` and ``bind``."""


def get_logger(name: str) -> Logger:
    """A structlog logger whose events are records of the standard library's logger `name`.

    It does not depend on structlog's global configuration: Leveret's events take this
    one road whatever the project configured.
    """
    logger: Logger = LeveretLogger(logging.getLogger(name), processors=(), context={})  # type: ignore[assignment]
    return logger


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
        event.setdefault("process", record.process)  # the fields first, as `_DirectJSON`
        for key, value in _process_fields.items():
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
            return _dumps(dict(redacted))
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


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to the process's standard error, whatever it is now.

    Lines of concurrent threads never interleave (the handler's lock). A write that fails
    (standard error closed, a broken pipe) drops the line instead of raising into the
    thread that logged: an I/O or handler thread must not die because a log line could not
    be written.

    Buffered (``leveret worker``): lines are collected and written together at least every
    `FLUSH_INTERVAL_S`, at once for warnings and errors, when `BUFFER_LINES` are waiting,
    and at exit (`logging.shutdown`, which runs after SIGTERM's graceful stop too); a
    SIGKILL loses at most the last `FLUSH_INTERVAL_S` of lines.
    """

    def __init__(self, *, buffered: bool = False) -> None:
        super().__init__(sys.stderr)
        self.buffered = buffered
        # Lines waiting, appended without a lock (a deque's append is atomic): eight handler
        # threads logging a line each per message would otherwise queue on the handler's
        # lock, and the thread holding it can lose the GIL while it does.
        self._pending: deque[str] = deque()
        self._flusher: threading.Thread | None = None
        self._closed = False

    @property
    def stream(self) -> Any:
        """The current standard error (tests and daemons replace it)."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record and write its line (or collect it, when buffered)."""
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001  # as `handleError`: drop the line
            return
        self.write_line(line, urgent=record.levelno >= logging.WARNING)

    def write_line(self, line: str, *, urgent: bool = False) -> None:
        """Write one rendered line; buffered, it waits unless `urgent` or the buffer is full."""
        pending = self._pending
        if (  # the common case (one line per handled message) first, in one test
            not urgent
            and self.buffered
            and self._flusher is not None
            and not self._closed
            and len(pending) < BUFFER_LINES - 1
        ):
            pending.append(line)
            return
        if not self.buffered or self._closed:
            with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                self._write(line + "\n")
            return
        pending.append(line)
        if urgent or len(pending) >= BUFFER_LINES:
            self.flush()
        elif self._flusher is None:
            with self.lock:  # type: ignore[union-attr]
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._flush_loop, name="leveret-log-flush", daemon=True
                    )
                    self._flusher.start()

    def flush(self) -> None:
        """Write every line collected so far, in the order they were collected."""
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def close(self) -> None:
        """Flush, and write every later line at once."""
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
            self._closed = True
            self._write_pending()  # a line appended by a thread that had not yet seen closed
        super().close()

    def _flush_loop(self) -> None:
        try:
            while not self._closed:
                time.sleep(FLUSH_INTERVAL_S)
                self.flush()
        finally:  # (never expected) the next line starts another
            self._flusher = None

    def _write_pending(self) -> None:
        pending = self._pending
        lines = []
        try:
            while True:  # what other threads append meanwhile waits for the next flush
                lines.append(pending.popleft())
        except IndexError:
            pass
        if lines:
            lines.append("")
            self._write("\n".join(lines))

    def _write(self, text: str) -> None:
        stream = sys.stderr
        # Nowhere left to say it (closed, broken pipe): drop the lines, keep the thread.
        with contextlib.suppress(Exception):
            stream.write(text)
            stream.flush()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's waiting lines and its flusher thread."""
        self._pending = deque()
        self._flusher = None

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        """Drop the line: nowhere left to say it, and losing it beats losing the thread."""


BUFFER_LINES = 512
"""Lines collected before they are written without waiting for the timer (about 128 KiB)."""
FLUSH_INTERVAL_S = 0.2


class _DirectJSON:
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
        for key, value in _process_fields.items():
            data.setdefault(key, value)
        data["level"] = _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower()
        data["logger"] = name
        data["timestamp"] = f"{self._prefix}.{nanoseconds // 1000:06d}Z"
        line = _dumps(data)
        if "://" in line:  # a URL somewhere, maybe with a password: redact each value
            line = _dumps(_REDACT(None, "", data))  # type: ignore[arg-type]
        self.handler.write_line(line, urgent=level >= logging.WARNING)


_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
_direct: _DirectJSON | None = None


def _own_process_fields() -> dict[str, Any]:
    """What every line says of the process that wrote it: its pid, and its slot when it is
    a child of ``leveret worker --processes N`` (the children share one standard error)."""
    fields: dict[str, Any] = {"process": os.getpid()}
    slot = os.environ.get(WORKER_SLOT_ENV, "")
    if slot.isdigit():
        fields["slot"] = int(slot)
    return fields


_process_fields = _own_process_fields()


def _fallback(value: Any) -> Any:
    """How a value JSON cannot hold is written (as structlog's JSONRenderer does)."""
    structured = getattr(value, "__structlog__", None)
    return structured() if callable(structured) else repr(value)


def _json_dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, default=_fallback)


try:
    import orjson

    def _dumps(data: dict[str, Any]) -> str:
        try:
            return orjson.dumps(data, default=_fallback).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int over 64 bits
            return _json_dumps(data)

except ImportError:  # pragma: no cover - orjson is a dependency; kept working without it
    _dumps = _json_dumps


def flush_logs() -> None:
    """Write every buffered log line now (before an exec or an exit that skips atexit)."""
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, StderrHandler):
            handler.flush()


def _after_fork_in_child() -> None:
    global _process_fields
    _process_fields = _own_process_fields()
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, StderrHandler):
            handler.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


_level_set: int | None = None
"""The level `configure_logging` gave the ``leveret`` logger (a later call may change it)."""


def configure_logging(
    level: str = "info", *, json: bool | None = None, buffered: bool = False
) -> None:
    """Send log records to standard error, unless the project configured logging already.

    For processes Leveret runs itself (the worker, the relay, the command line):

    - the root logger gets one `StderrHandler` with a `StructuredFormatter`, and the root
      level `level`, only when it has no handler yet: handlers the project configured
      (Django's ``LOGGING``, a ``logging.basicConfig`` of its own) are never removed, and
      records go to them instead;
    - the ``leveret`` logger gets the level `level` unless the project set one;
    - structlog, when the project did not configure it, is configured to hand its events
      to the standard library, so the project's own ``structlog.get_logger()`` calls come
      out the same way as Leveret's.

    Calling it again replaces what an earlier call installed, nothing else.

    Args:
        level: Minimum level: debug, info, warning, error.
        json: JSON lines if True, console rendering if False; by default JSON unless
            standard error is a terminal.
        buffered: Collect lines and write them together (see `StderrHandler`): the
            worker's setting, where one line per message is written.

    Raises:
        ConfigurationError: `level` is not a level name.
    """
    global _direct, _level_set
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigurationError(f"unknown log level {level!r}")
    root = logging.getLogger()
    ours = logging.getLogger(ROOT_LOGGER)
    for logger in (root, ours):
        for handler in list(logger.handlers):
            if isinstance(handler, StderrHandler):
                handler.flush()
                logger.removeHandler(handler)
    _direct = None
    if _level_set is not None and _level_set == ours.level:
        ours.setLevel(logging.NOTSET)  # ours from an earlier call: set again below
    if not root.handlers:
        handler = StderrHandler(buffered=buffered)
        formatter = StructuredFormatter(json=json)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        if formatter.json:
            _direct = _DirectJSON(handler)
        root.setLevel(numeric)
        # pika logs every reconnect attempt at ERROR with a traceback; we log our own line.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    if ours.level == logging.NOTSET:
        ours.setLevel(numeric)
        _level_set = numeric
    if not structlog.is_configured():
        structlog.configure(
            processors=[],  # LeveretLogger makes the record itself
            wrapper_class=LeveretLogger,
            logger_factory=structlog.stdlib.LoggerFactory(),
            context_class=dict,
            cache_logger_on_first_use=True,
        )


def add_fallback_handler() -> None:
    """Show Leveret's warnings on standard error when nothing else would handle them.

    For processes whose logging the project owns (a Django web process): only when no
    handler at all would receive a ``leveret`` record (no root handler, none on
    ``leveret``), one `StderrHandler` is added to the ``leveret`` logger, so a warning
    such as ``message_lost_after_commit`` is written with its fields, not as a bare line
    by the standard library's last resort. `configure_logging` replaces it.
    """
    ours = logging.getLogger(ROOT_LOGGER)
    if ours.hasHandlers():
        return
    handler = StderrHandler()
    handler.setFormatter(StructuredFormatter())
    ours.addHandler(handler)
