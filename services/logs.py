"""Logging: structlog, configured once per process.

Console output when standard error is a terminal, JSON lines otherwise. Every event passes
through `RedactSecrets`, so a broker URL with a password never reaches a log line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_URL_PASSWORD = re.compile(r"(amqps?|redis|postgres(?:ql)?)://([^:/@\s]*):([^@\s]*)@")


class RedactSecrets:
    """Processor that replaces passwords in URLs found in any string value with ``***``."""

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Redact every string value of the event."""
        for key, value in event_dict.items():
            if isinstance(value, str) and "://" in value:
                event_dict[key] = _URL_PASSWORD.sub(r"\1://\2:***@", value)
        return event_dict


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog (and the standard library's logging) for this process.

    Args:
        level: Minimum level: debug, info, warning, error.
        json: JSON lines if True, console rendering if False; by default JSON unless
            standard error is a terminal.

    Raises:
        ValueError: `level` is not a level name.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            RedactSecrets(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
    # pika logs every reconnect attempt at ERROR with a traceback; we log our own line.
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def get_logger(name: str) -> Any:
    """A structlog logger named `name`."""
    return structlog.get_logger(name)
