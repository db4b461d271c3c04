"""What the fault tests' actors write down: one line per event, appended by any process."""

from __future__ import annotations

import os
import time

from leveret.actors import AsyncContext, Context


def record_event(event: str, n: int, ctx: Context | AsyncContext) -> None:
    """Append ``event n pid message_id time`` to ``$LEVERET_TEST_RECORD`` (when set)."""
    path = os.environ.get("LEVERET_TEST_RECORD")
    if not path:
        return
    line = f"{event} {n} {os.getpid()} {ctx.message_id} {time.time():.3f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
