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

The parts live beside this module: `message_fields` (the handled message's fields),
`formatting` (`StructuredFormatter`), `json_lines` (the fast JSON line), `stderr`
(`StderrHandler`); their public names are importable from here too.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TypeAlias

import structlog
from structlog.typing import FilteringBoundLogger

from leveret.schemas.errors import ConfigurationError
from leveret.services.observability.formatting import (
    RECORD_ATTRIBUTES,
    StructuredFormatter,
    event_of,
)
from leveret.services.observability.json_lines import DirectJSONWriter
from leveret.services.observability.message_fields import (
    bind_message_fields,
    handled_message_fields,
    merge_message_fields,
    unbind_message_fields,
)
from leveret.services.observability.redaction import RedactSecrets
from leveret.services.observability.stderr import StderrHandler, flush_logs

__all__ = [
    "ROOT_LOGGER",
    "LeveretLogger",
    "Logger",
    "RedactSecrets",
    "StderrHandler",
    "StructuredFormatter",
    "add_fallback_handler",
    "bind_message_fields",
    "configure_logging",
    "event_of",
    "flush_logs",
    "get_logger",
    "leveret_owns_structlog",
    "merge_message_fields",
    "unbind_message_fields",
]

ROOT_LOGGER = "leveret"
"""Every logger of Leveret is below this one."""

_LOG_KWARGS = frozenset(("exc_info", "stack_info", "stacklevel"))
_REDACT = RedactSecrets()


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
        message = handled_message_fields.get()
        direct = _direct
        if direct is not None and not exc_info and not stack_info and direct.reaches(logger):
            # Only Leveret's own JSON handler would see the record: write its line directly,
            # with the fields in the order the formatter would write them.
            data: dict[str, Any] = {"event": event}
            if message:
                data.update(message)
            # structlog's own context variables (its public walk over the context: about
            # 0.3 µs; structlog offers no public way to skip it while nothing is bound).
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


_direct: DirectJSONWriter | None = None
"""Writes the JSON line of an event straight to the handler `configure_logging` added."""
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
            _direct = DirectJSONWriter(handler)
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
