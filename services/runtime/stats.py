"""A worker's counters: what became of the deliveries it handled (heartbeats, status)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from leveret.schemas import wire
from leveret.services.delivery import Outcome
from leveret.services.observability.redaction import redact

LAST_ERROR_LIMIT = 300


@dataclass(slots=True)
class Stats:
    """Counters of one worker, updated from handler threads."""

    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    """The last error that made a message retry or go to the dead-letter queue."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, outcome: Outcome) -> None:
        """Count one finished delivery."""
        with self.lock:
            if outcome.fate == "ack":
                self.handled += 1
                return
            if outcome.fate == "retry":
                self.retried += 1
            else:
                self.dead_lettered += 1
            message = outcome.headers.get(wire.ERROR_MESSAGE)
            kind = outcome.headers.get(wire.ERROR_TYPE) or outcome.headers.get(wire.ERROR_REASON)
            if message or kind:
                # Published in heartbeats, which any client of the vhost may read.
                error = redact(f"{kind}: {message}" if message else str(kind))
                self.last_error = error[:LAST_ERROR_LIMIT]
