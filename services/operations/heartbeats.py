"""Worker heartbeats: every few seconds each worker process says who and how it is.

A heartbeat is a small JSON document (`HEARTBEAT_FIELDS`) published, without confirm and as
a transient message, to the namespace's non-durable fanout exchange
``{namespace}._heartbeats`` (`leveret.services.topology.naming.heartbeats_exchange`) on a channel of
the worker's own connection. Nothing is bound to that exchange unless a ``leveret status``
listens, so when nobody looks RabbitMQ drops each heartbeat at once: no queue, no disk.

A worker that stops cleanly sends a last heartbeat with ``state: "stopped"``; one that is
killed simply stops sending, and ``leveret status`` marks it stale after
`STALE_AFTER_INTERVALS` intervals. `Heartbeats` is a middleware of the worker's broker: it
starts beating when the worker starts and sends the last one as it stops. The worker's
`Stats` give the messages handled, retried and dead-lettered; the requests (asks) it
answered and those it found past their deadline are counted here, in ``after_handle``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import sys
import threading
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from leveret.services.middleware import Middleware
from leveret.services.observability.logs import get_logger
from leveret.services.runtime.worker import Worker

if TYPE_CHECKING:
    from leveret.schemas.envelope import Envelope
    from leveret.services.delivery import Outcome

log = get_logger("leveret.heartbeats")

DEFAULT_INTERVAL_S = 5.0
STALE_AFTER_INTERVALS = 3
"""A worker not heard from for this many of its intervals is stale (15 s by default)."""
FORMAT = 1

HEARTBEAT_FIELDS = (
    "format",
    "id",
    "state",
    "host",
    "address",
    "pid",
    "version",
    "python",
    "namespace",
    "actors",
    "queues",
    "threads",
    "prefetch",
    "in_flight",
    "handled",
    "retried",
    "dead_lettered",
    "answered",
    "expired",
    "last_error",
    "memory_bytes",
    "started_at",
    "uptime_s",
    "sent_at",
    "interval_s",
    "connected",
    "consuming",
)


def leveret_version() -> str:
    """The installed Leveret's version."""
    try:
        return version("leveret")
    except PackageNotFoundError:
        return "0+unknown"


def _memory_bytes() -> int:
    """This process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class Heartbeats(Middleware):
    """Publishes a worker's heartbeat every `interval_s` seconds from a daemon thread.

    Give it to the worker's broker (``Broker(..., middleware=[Heartbeats()])``): it starts
    when the worker starts (``worker_started``; the first heartbeat once it consumes) and
    sends the last one, ``state: stopped``, as the worker stops (``worker_stopping``, while
    its connection is still open). One instance beats for one worker.

    Args:
        interval_s: Seconds between two heartbeats.

    Raises:
        ValueError: The interval is not positive.
    """

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError("the heartbeat interval must be positive")
        self.interval_s = interval_s
        self.id = uuid.uuid4().hex
        self.worker: Worker | None = None
        """The worker it beats for, from ``worker_started`` on."""
        self._started = time.monotonic()
        self._static: dict[str, Any] = {
            "format": FORMAT,
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": leveret_version(),
            "python": platform.python_version(),
            "started_at": round(time.time(), 3),
            "interval_s": interval_s,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.answered = 0
        """Requests its worker answered (with the answer, or the error that dead-lettered
        them)."""
        self.expired = 0
        """Requests its worker took, or was still handling, past their deadline."""
        self._asks_lock = threading.Lock()

    def worker_started(self, worker: Worker) -> None:
        """Start beating for `worker` (`start`), unless already beating for one."""
        if self.worker is None:
            self.start(worker)

    def worker_stopping(self, worker: Worker) -> None:
        """Send the last heartbeat of `worker` (`stop`)."""
        if worker is self.worker:
            self.stop()

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        """Count a request answered (the outcome carries a reply) or expired."""
        if outcome is None or (outcome.reply is None and not outcome.expired):
            return  # not a request: the worker's Stats count it
        with self._asks_lock:
            if outcome.expired:
                self.expired += 1
            else:
                self.answered += 1

    def payload(self, worker: Worker, state: str = "running") -> dict[str, Any]:
        """`worker`'s heartbeat now."""
        stats = worker.stats
        with stats.lock:
            counts = {
                "handled": stats.handled,
                "retried": stats.retried,
                "dead_lettered": stats.dead_lettered,
                "last_error": stats.last_error,
            }
        with self._asks_lock:
            counts["answered"], counts["expired"] = self.answered, self.expired
        connected, _opened = worker.consumer.presence.connection_state()
        return {
            **self._static,
            "namespace": worker.namespace,
            "actors": sorted(executor.name for executor in worker.executors.values()),
            "queues": sorted(worker.executors),
            "threads": worker.threads,
            "prefetch": worker.prefetch,
            "state": state,
            "address": worker.consumer.presence.local_address(),
            "in_flight": worker.in_flight,
            **counts,
            "memory_bytes": _memory_bytes(),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "sent_at": round(time.time(), 3),
            "connected": connected,
            "consuming": worker.consuming.is_set(),
        }

    def send(self, state: str = "running") -> None:
        """Publish one heartbeat now (dropped if the worker is not connected, or none
        started yet)."""
        worker = self.worker
        if worker is None:
            return
        body = json.dumps(self.payload(worker, state), separators=(",", ":")).encode()
        worker.consumer.presence.publish_heartbeat(body)

    def start(self, worker: Worker) -> None:
        """Send `worker`'s heartbeat every `interval_s` (the first once it consumes) until
        `stop`, which sends a last one with ``state: stopped``."""
        self.worker = worker
        self._thread = threading.Thread(target=self._loop, name="leveret-heartbeats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sending; send the last heartbeat (``state: stopped``) if still connected."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        try:
            self.send("stopped")
        except Exception:  # stopping anyway
            log.exception("heartbeat_failed")

    def _loop(self) -> None:
        if self.worker is not None:
            self.worker.consuming.wait(self.interval_s)
        while not self._stop.is_set():
            try:
                self.send()
            except Exception:  # keep beating: the next one may go through
                log.exception("heartbeat_failed")
            self._stop.wait(self.interval_s)
