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

import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

import structlog
from structlog.typing import FilteringBoundLogger

from leveret.schemas.errors import ConfigurationError
from leveret.services.redaction import redact, redact_value

ROOT_LOGGER = "leveret"
"""Every logger of Leveret is below this one."""

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}

# Attributes every LogRecord has: a field of the same name would make `logging` raise.
RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_LOG_KWARGS = ("exc_info", "stack_info", "stacklevel")


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


def to_record(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    """Last processor: the keyword arguments of `logging.Logger.log` for the event.

    The event name is the message; the fields become the record's attributes. A field
    named like an attribute every record has (``name``, ``module``, ``thread``…) is
    renamed with a trailing underscore instead of making `logging` raise.
    """
    kwargs: dict[str, Any] = {"msg": event_dict.pop("event", "")}
    for name in _LOG_KWARGS:
        if name in event_dict:
            kwargs[name] = event_dict.pop(name)
    kwargs["extra"] = {
        (f"{key}_" if key in RECORD_ATTRIBUTES else key): value for key, value in event_dict.items()
    }
    return kwargs


class LeveretLogger(structlog.stdlib.BoundLogger):
    """structlog's standard-library logger, asking the logger's level first.

    An event below the level of its `logging.Logger` costs one level check: no event
    dict is built, no processor runs. The record names the line that logged (its
    ``pathname``, ``lineno``, ``funcName``), not structlog's.
    """

    def _proxy_to_logger(
        self, method_name: str, event: str | None = None, *event_args: str, **event_kw: Any
    ) -> Any:
        level = _LEVELS.get(method_name)
        if level is not None and not self._logger.isEnabledFor(level):
            return None
        # The frames between the caller and `logging`: structlog's info() (or error(),
        # exception()…), this method and structlog's two proxies (tests/services/
        # test_logging.py checks the line a record names).
        event_kw.setdefault("stacklevel", 5)
        return super()._proxy_to_logger(method_name, event, *event_args, **event_kw)


_PROCESSORS: list[Any] = [structlog.contextvars.merge_contextvars, _REDACT, to_record]


Logger: TypeAlias = FilteringBoundLogger
"""The logger Leveret hands out (`get_logger`, `Context.log`): structlog's bound logger,
with ``debug``/``info``/``warning``/``error``/``exception`` and ``bind``."""


def get_logger(name: str) -> Logger:
    """A structlog logger whose events are records of the standard library's logger `name`.

    It does not depend on structlog's global configuration: Leveret's events take this
    one road whatever the project configured.
    """
    logger: Logger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=_PROCESSORS,
        wrapper_class=LeveretLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
    )
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
    events carry theirs so), ``level``, ``timestamp`` (UTC), ``logger`` and, if any, the
    formatted ``exception``; URL passwords are redacted. Usable in Django's ``LOGGING``::

        "formatters": {"structured": {"()": "leveret.services.logs.StructuredFormatter"}}

    Args:
        json: JSON lines if True, console lines if False; by default JSON unless standard
            error is a terminal.
    """

    def __init__(self, json: bool | None = None) -> None:
        super().__init__()
        if json is None:
            json = not sys.stderr.isatty()
        self._render: Any = (
            structlog.processors.JSONRenderer()
            if json
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        )

    def format(self, record: logging.LogRecord) -> str:
        """The record as one rendered line."""
        event = event_of(record)
        level = event["level"]
        event["timestamp"] = datetime.fromtimestamp(record.created, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exception"] = record.exc_text
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        line: str = self._render(None, level, _REDACT(None, level, event))
        return line


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to the process's standard error, whatever it is now.

    Lines of concurrent threads never interleave (the handler's lock). A write that fails
    (standard error closed, a broken pipe) drops the line instead of raising into the
    thread that logged: an I/O or handler thread must not die because a log line could not
    be written.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        """The current standard error (tests and daemons replace it)."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        """Drop the line: nowhere left to say it, and losing it beats losing the thread."""


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
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

    Raises:
        ConfigurationError: `level` is not a level name.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigurationError(f"unknown log level {level!r}")
    root = logging.getLogger()
    ours = logging.getLogger(ROOT_LOGGER)
    for logger in (root, ours):
        for handler in list(logger.handlers):
            if isinstance(handler, StderrHandler):
                logger.removeHandler(handler)
    if getattr(ours, "_leveret_level", None) == ours.level:
        ours.setLevel(logging.NOTSET)  # ours from an earlier call: set again below
    if not root.handlers:
        handler = StderrHandler()
        handler.setFormatter(StructuredFormatter(json=json))
        root.addHandler(handler)
        root.setLevel(numeric)
        # pika logs every reconnect attempt at ERROR with a traceback; we log our own line.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    if ours.level == logging.NOTSET:
        ours.setLevel(numeric)
        ours._leveret_level = numeric  # type: ignore[attr-defined]
    if not structlog.is_configured():
        structlog.configure(
            processors=_PROCESSORS,
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
