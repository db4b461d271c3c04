"""Health of a worker, for load balancers, orchestrators and container health checks.

A worker is healthy while it is connected and consuming and all its threads are alive;
while the broker is unreachable and it reconnects, once it has begun shutting down, or
after an internal fault, it is not. Two ways to show it:

- `HealthServer`: HTTP on ``host:port`` (a daemon thread; 127.0.0.1 unless told
  otherwise), ``200`` with a small JSON body while healthy, ``503`` with the same body
  otherwise. Each connection must be done within `REQUEST_TIMEOUT_S` and at most
  `MAX_CONNECTIONS` are open (a new one closes the oldest), so slow or many clients can
  neither pile up in the worker nor keep a probe from its answer;
- `HealthFile`: a file rewritten every few seconds while healthy and removed when not
  (for probes that can only look at files).

And the probes `leveret ping` uses for a worker: `probe_url` and `probe_file` (the broker
itself is pinged by `leveret.services.rabbitmq.ping`).

One process only: the supervisor of ``--processes N`` answers for the whole worker (its
children cannot share one port), healthy while every child is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from leveret.services.observability.logs import get_logger
from leveret.services.runtime.worker import Worker

log = get_logger("leveret.health")

DEFAULT_FILE_INTERVAL_S = 5.0
DEFAULT_HOST = "127.0.0.1"
MAX_CONNECTIONS = 64
"""HTTP health connections open at once; a new one closes the oldest."""
REQUEST_TIMEOUT_S = 3.0
"""A health client that has not sent its whole request and read its answer within this is
disconnected, however it dribbles its bytes."""
MAX_REQUEST_BYTES = 8192
"""A request head longer than this is not read: the client is disconnected."""
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus's text exposition format."""

Exposition = Callable[[], bytes]
"""Gives the metrics in Prometheus's text format."""


@dataclass(frozen=True, slots=True)
class Health:
    """One answer to "is it healthy?": the verdict and what is shown with it.

    Args:
        healthy: Whether it is healthy.
        details: JSON-serialisable facts (status, pid, queues, counts, or an error).
    """

    healthy: bool
    details: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        """The JSON body of the HTTP answer (and of the health file)."""
        return json.dumps(
            {"status": "ok" if self.healthy else "unavailable", **self.details}, sort_keys=True
        ).encode()


class Probe(Protocol):
    """Anything that can say whether it is healthy (a worker, a supervisor)."""

    def check(self) -> Health:
        """The current health; called from the health threads, must be thread-safe."""
        ...


class WorkerProbe:
    """Healthy while the worker consumes, every one of its threads is alive and its event
    loop (if it has async handlers) turns.

    The worker clears `consuming` when its connection or channel is lost and when it
    begins shutting down, and sets it again once it consumes after reconnecting. A thread
    that died (a fault of Leveret's own) makes it unhealthy at once; an event loop that has
    not turned for `EventLoop.unhealthy_after_s` (an async handler blocking it) makes it
    unhealthy until it turns again.

    Args:
        worker: The worker.
        queues: The queues it consumes (full names), shown in the report.
    """

    def __init__(self, worker: Worker, queues: Iterable[str]) -> None:
        self.worker = worker
        self.queues = sorted(queues)
        self._started = time.monotonic()

    def check(self) -> Health:
        """The worker's health and counters."""
        stats = self.worker.stats
        with stats.lock:
            counts = {
                "handled": stats.handled,
                "retried": stats.retried,
                "dead_lettered": stats.dead_lettered,
            }
        details: dict[str, Any] = {
            "pid": os.getpid(),
            "queues": self.queues,
            "uptime_s": round(time.monotonic() - self._started, 1),
            **counts,
        }
        alive = self.worker.threads_alive()
        loop = self.worker.event_loop
        stalled_s = loop.stalled_s() if loop is not None else 0.0
        stuck = loop is not None and stalled_s > loop.unhealthy_after_s
        if self.worker.fatal_error:
            details["error"] = self.worker.fatal_error
        elif not alive:
            details["error"] = "a worker thread has stopped"
        elif stuck:
            details["error"] = (
                f"the event loop has not turned for {stalled_s:.1f}s: an async handler blocks "
                "it (time.sleep, a synchronous client), so every async handler waits"
            )
        return Health(self.worker.consuming.is_set() and alive and not stuck, details)


class ChildrenProbe:
    """Healthy while every child's `HealthFile` is fresh: a supervisor's answer for its children.

    The children of ``leveret worker --processes N`` cannot share one port. The supervisor
    runs each child with its own ``--health-file`` (and no ``--health-port``) and serves the
    worker's port (or file) itself with this probe.

    Args:
        paths: A callable giving the children's health files now (children come and go).
        max_age_s: A file older than this counts as a hung child.
        stopping: Set once the supervisor is shutting down (unhealthy from then on).
    """

    def __init__(
        self,
        paths: Callable[[], Iterable[str | os.PathLike[str]]],
        max_age_s: float = 3 * DEFAULT_FILE_INTERVAL_S,
        stopping: threading.Event | None = None,
    ) -> None:
        self.paths = paths
        self.max_age_s = max_age_s
        self.stopping = stopping or threading.Event()

    def check(self) -> Health:
        """Healthy if not stopping, and every child's file exists and is fresh."""
        children = []
        healthy = not self.stopping.is_set()
        totals = {"handled": 0, "retried": 0, "dead_lettered": 0}
        for path in self.paths():
            child = probe_file(path, self.max_age_s)
            try:
                report = _json(Path(path).read_bytes()) if child.healthy else child.details
            except OSError as exc:  # removed between the two looks: not healthy now
                child, report = Health(False), {"error": repr(exc)}
            healthy = healthy and child.healthy
            for key in totals:
                totals[key] += int(report.get(key, 0))
            children.append({"healthy": child.healthy, **report})
        return Health(
            healthy and bool(children), {"pid": os.getpid(), "children": children, **totals}
        )


class HealthServer:
    """Answers HTTP health checks on ``host:port`` from a daemon thread.

    ``/metrics``: the Prometheus metrics `metrics` gives (404 without). Any other path:
    ``GET`` answers ``200`` and the JSON of `Health.body` while `probe` is healthy, ``503``
    and the same JSON otherwise; ``HEAD`` the same without the body.

    One asyncio loop serves every connection, so slow or many clients cost no thread.
    Each connection must send its whole request head (at most `MAX_REQUEST_BYTES`) and
    read its answer within `REQUEST_TIMEOUT_S`, however it dribbles it (a slowloris client
    is cut then); at most `MAX_CONNECTIONS` are open at once, and a new one closes the
    oldest, so a probe is answered at once however many clients hold connections open.

    Args:
        probe: What decides the answer.
        port: TCP port; 0 picks a free one (see `port`).
        host: Address to listen on: loopback by default; ``0.0.0.0`` (every interface)
            where probes come from outside, e.g. a container's port probed by Kubernetes.
        metrics: Gives the Prometheus text exposition served at ``/metrics``.

    Raises:
        OSError: The port cannot be bound (in use, no permission).
    """

    def __init__(
        self,
        probe: Probe,
        port: int,
        host: str = DEFAULT_HOST,
        metrics: Exposition | None = None,
    ) -> None:
        self.probe = probe
        self.metrics = metrics
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        # Open connections, oldest first (the one a new connection closes when full).
        self._open: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()
        self._started = threading.Event()

    def start(self) -> None:
        """Serve in a daemon thread; returns once it listens."""
        self._thread = threading.Thread(target=self._main, name="leveret-health-http", daemon=True)
        self._thread.start()
        self._started.wait(5)
        log.info("health_listening", host=self.host, port=self.port)

    def close(self) -> None:
        """Stop serving and close the socket (and every connection)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                loop.call_soon_threadsafe(stop.set)
            self._thread.join(5)
        self._socket.close()

    # The server's thread ----------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException:  # probes now fail to connect: say why, loudly
            log.exception("health_server_failed", port=self.port)
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, sock=self._socket, limit=MAX_REQUEST_BYTES
        )
        self._started.set()
        async with server:
            await self._stop.wait()
            server.close()
            # Connections accepted as it closed get their transports (and so the abort
            # below); then each aborted one's connection_lost runs, closing its socket
            # before the loop ends (else it leaks, with a ResourceWarning at collection).
            await asyncio.sleep(0.05)
            for writer in list(self._open):
                writer.transport.abort()
            await asyncio.sleep(0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open[writer] = None
        while len(self._open) > MAX_CONNECTIONS:
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.transport.abort()  # full: the oldest (a slow client) makes room
        try:
            await asyncio.wait_for(self._exchange(reader, writer), REQUEST_TIMEOUT_S)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a slow, silent, gone or oversized client: hang up
        except Exception:  # one connection's fault never ends the server
            log.exception("health_request_failed")
        finally:
            self._open.pop(writer, None)
            writer.transport.abort()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            status, body, kind = 405, b"GET or HEAD\n", "text/plain"
        elif path.split("?", 1)[0] == "/metrics":
            # Off the loop: the multiprocess collector reads every child's file, and a
            # probe must not wait for a scrape.
            status, body, kind = await asyncio.to_thread(self._metrics)
        else:
            health = self._check()
            status, body, kind = 200 if health.healthy else 503, health.body(), "application/json"
        reason = HTTPStatus(status).phrase
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n".encode()
            + (body if method == b"GET" else b"")
        )
        # Sent whole before the connection ends (an abort would drop what the socket has
        # not taken yet: the tail of a large /metrics); the deadline still bounds it.
        writer.close()
        await writer.wait_closed()

    def _check(self) -> Health:
        try:
            return self.probe.check()
        except Exception as exc:  # a probe that fails says "unhealthy"
            log.exception("health_check_failed")
            return Health(False, {"error": f"health check failed: {type(exc).__name__}"})

    def _metrics(self) -> tuple[int, bytes, str]:
        exposition = self.metrics
        if exposition is None:
            return 404, b"metrics are off (leveret worker --metrics)\n", "text/plain"
        try:
            return 200, exposition(), METRICS_CONTENT_TYPE
        except Exception as exc:  # a scrape never kills the worker
            log.exception("metrics_failed")
            return 500, f"metrics failed: {type(exc).__name__}\n".encode(), "text/plain"


class HealthFile:
    """Keeps a file at `path` fresh while `probe` is healthy; removes it when not.

    Every `interval_s` the probe is asked; when healthy the file is rewritten (atomically,
    so its modification time says when it was last healthy, its content is `Health.body`),
    otherwise it is removed. A check can then test that the file exists and is recent
    (``leveret ping --health-file PATH --max-age S``).

    Args:
        probe: What decides.
        path: The file.
        interval_s: Seconds between two checks.
    """

    def __init__(
        self,
        probe: Probe,
        path: str | os.PathLike[str],
        interval_s: float = DEFAULT_FILE_INTERVAL_S,
    ) -> None:
        self.probe = probe
        self.path = Path(path)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start updating the file in a daemon thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="leveret-health-file", daemon=True)
        self._thread.start()

    def update(self) -> bool:
        """Check once: write or remove the file. Returns whether it was healthy."""
        health = self.probe.check()
        if health.healthy:
            partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            partial.write_bytes(health.body())
            os.replace(partial, self.path)
        else:
            self._remove()
        return health.healthy

    def close(self) -> None:
        """Stop updating and remove the file (the process is no longer healthy)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._remove()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.update()
            except OSError as exc:
                log.warning("health_file_failed", path=str(self.path), error=repr(exc))
            except Exception:  # keep reporting; the file goes stale meanwhile
                log.exception("health_file_failed", path=str(self.path))
            self._stop.wait(self.interval_s)

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# Probes for `leveret ping` ----------------------------------------------------------------


def probe_url(url: str, timeout_s: float = 5.0) -> Health:
    """Ask a worker's health endpoint (`HealthServer`).

    Returns:
        Healthy on a ``200`` answer; otherwise unhealthy, with ``error`` in the details
        (the HTTP status and the worker's own report, or why it could not be reached).
    """
    if urlsplit(url).scheme not in ("http", "https"):
        return Health(False, {"error": f"not an http(s) URL: {url}"})
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310  # http(s) only
            return Health(answer.status == 200, _json(answer.read()))
    except urllib.error.HTTPError as exc:
        details = _json(exc.read())
        reported = details.get("status", "")
        return Health(False, {**details, "error": f"HTTP {exc.code} {reported}".strip()})
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Health(False, {"error": f"cannot reach {url}: {reason}"})


def probe_file(path: str | os.PathLike[str], max_age_s: float) -> Health:
    """Check a `HealthFile`: healthy if it exists and was rewritten at most `max_age_s` ago."""
    try:
        age_s = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return Health(False, {"error": f"{path} does not exist: the worker is not healthy"})
    except OSError as exc:
        return Health(False, {"error": f"cannot read {path}: {exc}"})
    if age_s > max_age_s:
        return Health(False, {"error": f"{path} is {age_s:.0f}s old (more than {max_age_s:g}s)"})
    return Health(True, {"age_s": round(age_s, 1)})


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class HealthReporters:
    """The `HealthServer` and/or `HealthFile` of one process, started and closed together.

    Args:
        probe: What decides.
        port: Serve HTTP health checks on this port; None for no server.
        host: The address the server listens on.
        path: Keep this health file; None for no file.
        file_interval_s: Seconds between two updates of the file.
        metrics: Served at ``/metrics`` on the port.

    Raises:
        OSError: The port cannot be bound.
    """

    def __init__(
        self,
        probe: Probe,
        *,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        path: str | os.PathLike[str] | None = None,
        file_interval_s: float = DEFAULT_FILE_INTERVAL_S,
        metrics: Exposition | None = None,
    ) -> None:
        self.server = HealthServer(probe, port, host, metrics) if port is not None else None
        self.file = HealthFile(probe, path, file_interval_s) if path is not None else None

    def start(self) -> None:
        """Start serving and updating."""
        if self.server is not None:
            self.server.start()
        if self.file is not None:
            self.file.start()

    def close(self) -> None:
        """Stop serving; remove the file."""
        if self.server is not None:
            self.server.close()
        if self.file is not None:
            self.file.close()
