"""What text may show: passwords kept out of logs and errors, and no terminal controls.

`redact`: in any text, every URL's password becomes ``***``. URLs are found in free text
(a log line, an exception's message, a traceback), whatever their scheme and its case
(``amqp://``, ``AMQPS://``, ``postgresql+psycopg://``…), and whatever the password holds:
spaces, ``@``, ``/``, ``#``, ``:``, quotes, ``%``-escapes, any character but a line break
(Python's URL parsing, and so pika's, drops line breaks). A password with spaces has no
visible end but its last ``@``: from ``scheme://user:`` the password runs to the last ``@``
of its line, or, in a list of URLs with commas between them (``…@h1,amqp://…``, the form
`Broker` takes), to the last ``@`` before the next URL (a password cannot hold a comma
followed by a URL: `Broker` would split it there). So when a password is ambiguous (an
``@`` later on the line, a URL without a password followed by one with), more is hidden
rather than less: the redaction never lets a password through.

`RedactSecrets`: the same for every value of a log event (a structlog processor).

`printable`: text from the wire (heartbeats, the management API, dead letters) made safe
for a terminal or a text file: control characters (C0 and C1: ``ESC``, ``BEL``, an OSC
title sequence), bidirectional overrides and isolates, and other invisible formatting
characters are shown escaped (``\\x1b``, ``\\u202e``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import MutableMapping
from typing import Any

# Where a password starts: "://", a user name (which holds no ":", "/", "@" or line break),
# ":". No scheme is needed to find one, and without it the search is linear whatever the
# text (a scheme pattern tried at every letter of a long word is not).
_PASSWORD_START = re.compile(r"://[^:/@\r\n]*:")
# Where the next URL of a list starts: a comma, spaces, a scheme (config.broker_urls splits
# a broker URL setting at exactly these).
_NEXT_URL = re.compile(r",\s*[A-Za-z][A-Za-z0-9+.\-]*://")
_LINE_BREAK = re.compile(r"[\r\n]")
_MAX_DEPTH = 8


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ``***``."""
    if "://" not in text:
        return text
    spans = _password_spans(text)
    if not spans:
        return text
    parts = []
    kept = 0
    for start, end in spans:
        parts.append(text[kept:start])
        parts.append("***")
        kept = end
    parts.append(text[kept:])
    return "".join(parts)


def _password_spans(text: str) -> list[tuple[int, int]]:
    """Where the passwords of `text` are: (start, end) of each, in order."""
    spans = []
    position = 0
    line_end = -1
    while (found := _PASSWORD_START.search(text, position)) is not None:
        start = found.end()
        if start > line_end:  # on a line further on (found once a line: linear time)
            line_end = _line_end(text, start)
        first_at = text.find("@", start, line_end)
        if first_at < 0:  # no "@" left on this line: no password on it either
            position = line_end
            continue
        end = -1
        for following in _NEXT_URL.finditer(text, start, line_end):
            if following.start() > first_at:  # the password ends before this next URL
                end = text.rfind("@", start, following.start())
                break
        if end < 0:
            end = text.rfind("@", start, line_end)
        spans.append((start, end))
        position = end + 1
    return spans


def _line_end(text: str, start: int) -> int:
    found = _LINE_BREAK.search(text, start)
    return found.start() if found is not None else len(text)


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


# Control characters (C0, C1), invisible format characters (bidirectional overrides and
# isolates, zero-width characters), surrogates, private-use and unassigned code points, and
# line or paragraph separators: anything a publisher could use to rewrite what an operator's
# terminal shows.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Letters and marks that show nothing (Hangul fillers, the combining grapheme joiner, Khmer
# inherent vowels): Python counts them printable.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` safe for a terminal or a text file: every control or invisible character
    escaped (``\\x1b``, ``\\u202e``).

    Args:
        text: Any text from the wire.
        keep_newlines: Leave ``\\n`` and ``\\t`` as they are (a traceback's lines).
    """
    if text.isprintable() and _INVISIBLE.isdisjoint(text):
        return text
    out = []
    for char in text:
        if keep_newlines and char in "\n\t":
            out.append(char)
        elif char in _INVISIBLE or unicodedata.category(char) in _UNPRINTABLE:
            code = ord(char)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def shown(text: str) -> str:
    """`text` from the wire as it may be shown on one line: passwords redacted, every
    control or invisible character escaped."""
    return printable(redact(text))
