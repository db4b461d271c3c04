"""What each peer's handler calls: counts messages, records the first and the last.

``BENCH_PEER_SLEEP_MS`` makes each handler wait that long first, as an I/O-bound handler
does (a blocking sleep in the thread-based peers, ``asyncio.sleep`` in FastStream's).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

_lock = threading.Lock()
_seen = 0
_total = int(os.environ.get("BENCH_PEER_COUNT", "0"))
_record = os.environ.get("BENCH_PEER_RECORD", os.devnull)
_sleep_s = float(os.environ.get("BENCH_PEER_SLEEP_MS", "0")) / 1000
_latency = os.environ.get("BENCH_PEER_LATENCY") == "1"


def work() -> None:
    """The handler's I/O, blocking (thread-based peers)."""
    if _sleep_s:
        time.sleep(_sleep_s)


async def work_async() -> None:
    """The handler's I/O, awaited (async peers)."""
    if _sleep_s:
        await asyncio.sleep(_sleep_s)


_latencies: list[float] = []


def handled(sent_at: float | None = None) -> None:
    """One message handled (from any thread); `sent_at`: when it was published, for the
    latency run (``BENCH_PEER_LATENCY=1``), whose samples go to ``{record}.latencies``."""
    global _seen
    now = time.time()
    with _lock:
        _seen += 1
        seen = _seen
        if _latency and sent_at is not None:
            _latencies.append(now - sent_at)
    if seen == _total and _latency:
        with open(f"{_record}.latencies", "w") as samples:
            samples.write(" ".join(f"{value:.6f}" for value in _latencies))
    if seen == 1 or seen == _total:
        with open(_record, "a") as record:
            record.write(f"{'first' if seen == 1 else 'last'} {now:.6f}\n")
