"""Pure helpers that derive names from Python identifiers."""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """Turn a class or function name into snake case.

    Args:
        name: An identifier such as ``OrderPlaced`` or ``HTTPRequestSeen``.

    Returns:
        ``order_placed``, ``http_request_seen``.
    """
    return _BOUNDARY.sub("_", name).lower()
