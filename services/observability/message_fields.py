"""The handled message's fields (actor, topic, message_id…) in every event its handler logs.

The worker binds them around each handler (`bind_message_fields`): one context variable of
Leveret's, not five of structlog's, because binding and unbinding those cost 2 µs a message
(docs/performance.md). Leveret's loggers read `handled_message_fields` directly; a project's
own structlog chain gets them from `merge_message_fields`.
"""

from __future__ import annotations

import contextvars
from collections.abc import MutableMapping
from typing import Any

handled_message_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "leveret_message_fields", default=None
)
"""The fields of the message being handled, set by the worker for the time of its handler."""


def bind_message_fields(fields: dict[str, Any]) -> contextvars.Token[dict[str, Any] | None]:
    """Add `fields` to every event logged in this context until `unbind_message_fields`.

    The worker's own binding around each handler: Leveret's loggers (and structlog's
    ``get_logger()`` when Leveret configured structlog) merge them into each event; a
    project's own structlog chain gets them from `merge_message_fields`, or from
    structlog's ``merge_contextvars`` (the worker binds those too when the project
    configured structlog itself).
    """
    return handled_message_fields.set(fields)


def unbind_message_fields(token: contextvars.Token[dict[str, Any] | None]) -> None:
    """Undo `bind_message_fields`."""
    handled_message_fields.reset(token)


def merge_message_fields(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the handled message's fields, for a project's own chain."""
    fields = handled_message_fields.get()
    if fields:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict
