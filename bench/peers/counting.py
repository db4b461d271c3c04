"""What each peer's handler calls: counts messages, records the first and the last."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_seen = 0
_total = int(os.environ.get("BENCH_PEER_COUNT", "0"))
_record = os.environ.get("BENCH_PEER_RECORD", os.devnull)


def handled() -> None:
    """One message handled (from any thread)."""
    global _seen
    with _lock:
        _seen += 1
        seen = _seen
    if seen == 1 or seen == _total:
        with open(_record, "a") as record:
            record.write(f"{'first' if seen == 1 else 'last'} {time.time():.6f}\n")
