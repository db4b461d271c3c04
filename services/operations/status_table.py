"""The text form of a `Snapshot` (``leveret status`` without ``--json``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from leveret.services.observability.redaction import printable
from leveret.services.operations.status import Snapshot


def render(snapshot: Snapshot) -> str:
    """The snapshot as aligned tables: header, workers, queues, warnings."""
    taken = datetime.fromtimestamp(snapshot.taken_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    source = {
        "management": "queue figures from RabbitMQ's management API",
        "amqp": "queue figures over AMQP (no unacked counts or rates)",
        "memory": "in-memory broker",
    }[snapshot.source]
    lines = [f"Leveret namespace {snapshot.namespace} at {taken}: {source}"]
    if snapshot.source_note:
        lines.append(f"  ({snapshot.source_note})")
    live = [w for w in snapshot.workers if not w.stale]
    stale = len(snapshot.workers) - len(live)
    hosts = len({w.host for w in snapshot.workers})
    lines += ["", f"WORKERS: {len(live)} live, {stale} stale, on {hosts} host(s)"]
    worker_rows = [
        [
            w.host,
            w.address or "-",
            str(w.pid),
            w.version,
            ",".join(w.actors),
            str(w.threads),
            str(w.in_flight),
            str(w.handled),
            str(w.retried),
            str(w.dead_lettered),
            str(w.answered),
            str(w.expired),
            _bytes(w.memory_bytes),
            _duration(w.uptime_s),
            f"{w.age_s:.0f}s ago",
            "STALE" if w.stale else _state(w.connected, w.consuming),
        ]
        for w in snapshot.workers
    ]
    lines += _table(
        [
            "HOST",
            "ADDRESS",
            "PID",
            "VERSION",
            "ACTORS",
            "THREADS",
            "IN FLIGHT",
            "HANDLED",
            "RETRIED",
            "DEAD",
            "ANSWERED",
            "EXPIRED",
            "MEMORY",
            "UP",
            "SEEN",
            "STATE",
        ],
        worker_rows,
    ) or ["  (no heartbeats: no worker runs, or they run with --heartbeat-interval 0)"]
    errors = [w for w in snapshot.workers if w.last_error]
    for w in errors[:10]:
        error = " ".join((w.last_error or "").split())  # one line: a traceback's lines joined
        lines.append(f"  last error of {w.host} pid {w.pid}: {error}")
    lines += ["", f"QUEUES: {len(snapshot.queues)}"]
    queue_rows = []
    for q in snapshot.queues:
        f = q.figures
        queue_rows.append(
            [
                q.actor,
                str(f.ready) if f else "missing",
                _optional(f.unacked if f else None),
                str(f.consumers) if f else "-",
                _rate(f.incoming_per_s if f else None),
                _rate(f.delivered_per_s if f else None),
                _optional(q.dead_letters),
            ]
        )
    lines += _table(
        ["ACTOR", "READY", "UNACKED", "CONSUMERS", "IN/S", "OUT/S", "DEAD LETTERS"], queue_rows
    ) or ["  (no actor queues known: pass the actor MODULES, or start a worker)"]
    lines += ["", f"WARNINGS: {len(snapshot.warnings)}"]
    lines += [f"  ! {warning.message}" for warning in snapshot.warnings] or ["  none"]
    if snapshot.ignored_heartbeats:
        lines.append(
            f"  ({snapshot.ignored_heartbeats} messages on the heartbeats route were not "
            "heartbeats and were ignored)"
        )
    # The reader escaped what came from the wire; this holds for whatever a snapshot holds.
    return "\n".join(printable(line) for line in lines) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return []
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    return [
        (
            "  " + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True))
        ).rstrip()
        for row in [list(header), *cells]
    ]


def _cell(value: str) -> str:
    """One table cell: control and invisible characters escaped (heartbeats are
    untrusted), at most 60 wide."""
    text = printable(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _optional(value: int | None) -> str:
    return "-" if value is None else str(value)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _state(connected: bool, consuming: bool) -> str:
    if consuming:
        return "consuming"
    return "connected, not consuming" if connected else "disconnected"


def _bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{value}B"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
