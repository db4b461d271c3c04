"""Logging: structlog, configured once per process.

Console output when standard error is a terminal, JSON lines otherwise. Every event passes
through `RedactSecrets`, so a broker URL with a password never reaches a log line: events
logged with structlog, and records of the standard library's `logging` (pika, Django,
your own code), which go through the same processors.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TypeAlias

import structlog
from structlog.typing import FilteringBoundLogger

from leveret.schemas.errors import ConfigurationError
from leveret.services.redaction import redact_value


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
            if not isinstance(value, int | float | bool | type(None)):
                event_dict[key] = redact_value(value)
        return event_dict


class StderrLogger:
    """Writes each rendered line to the process's standard error, whatever it is now.

    Lines of concurrent threads never interleave. A write that fails (standard error closed
    or a broken pipe) drops the line instead of raising into the thread that logged: an I/O
    or handler thread must not die because a log line could not be written.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        """Write one line."""
        try:
            with self._lock:
                print(message, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass  # nowhere left to say it: losing the line beats losing the thread

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg


_STDERR = StderrLogger()


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog (and the standard library's logging) for this process.

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
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            RedactSecrets(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_args: _STDERR,
        cache_logger_on_first_use=True,
    )
    # Standard-library records: the same processors, the same redaction, the same format.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            RedactSecrets(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    # pika logs every reconnect attempt at ERROR with a traceback; we log our own line.
    logging.getLogger("pika").setLevel(logging.CRITICAL)


Logger: TypeAlias = FilteringBoundLogger
"""The logger Leveret hands out (`get_logger`, `Context.log`): structlog's bound logger,
with ``debug``/``info``/``warning``/``error``/``exception`` and ``bind``."""


def get_logger(name: str) -> Logger:
    """A structlog logger named `name`, configured by `configure_logging`."""
    logger: Logger = structlog.get_logger(name)
    return logger
