"""An exception as text, whatever user code its ``__str__`` or ``__repr__`` runs."""

from __future__ import annotations

import traceback


def text(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001  # user code: fall back on what cannot fail
        return f"<{type(exc).__name__} whose str() failed>"


def traceback_of(exc: BaseException) -> str:
    """The formatted traceback of `exc`, or its type when formatting it fails."""
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001  # user code in __str__ / __repr__: fall back
        return f"{type(exc).__module__}.{type(exc).__qualname__} (traceback not available)"
