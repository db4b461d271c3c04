"""Passwords kept out of logs and errors: in any text, every URL's password becomes ``***``.

URLs are found in free text (a log line, an exception's message, a traceback), whatever
their scheme and its case (``amqp://``, ``AMQPS://``, ``postgresql+psycopg://``…), and
whatever the password holds: ``@``, ``/``, ``#``, ``:`` or ``%`` as users really write them.
When a password is ambiguous (an ``@`` after the host, too), more is hidden rather than
less: the redaction never lets a password through.
"""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@host — the password runs to the last "@" before the end of the
# URL (whitespace, a comma between URLs, or the end of the text).
_CREDENTIALS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s:/@,]*):(?P<password>\S*?)@"
    r"(?=[^@\s,]*(?:[\s,]|$))"
)
_MAX_DEPTH = 8


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ``***``."""
    if "://" not in text:
        return text
    return _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


def redact_value(value: Any, _depth: int = 0) -> Any:
    """`value` with `redact` applied to every string in it, in dicts, lists and tuples too."""
    if isinstance(value, str):
        return redact(value)
    if _depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {key: redact_value(item, _depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(redact_value(item, _depth + 1) for item in value)
    return value
