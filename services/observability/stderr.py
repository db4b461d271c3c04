"""The handler that writes log lines to standard error, buffered in the worker.

`StderrHandler` writes to whatever standard error is now; buffered, lines are collected
without a lock and written together by a flusher thread. `flush_logs` writes what waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any

BUFFER_LINES = 512
"""Lines collected before they are written without waiting for the timer (about 128 KiB)."""
FLUSH_INTERVAL_S = 0.2


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to the process's standard error, whatever it is now.

    Lines of concurrent threads never interleave (the handler's lock). A write that fails
    (standard error closed, a broken pipe) drops the line instead of raising into the
    thread that logged: an I/O or handler thread must not die because a log line could not
    be written.

    Buffered (``leveret worker``): lines are collected and written together at least every
    `FLUSH_INTERVAL_S`, at once for warnings and errors, when `BUFFER_LINES` are waiting,
    and at exit (`logging.shutdown`, which runs after SIGTERM's graceful stop too); a
    SIGKILL loses at most the last `FLUSH_INTERVAL_S` of lines.
    """

    def __init__(self, *, buffered: bool = False) -> None:
        super().__init__(sys.stderr)
        self.buffered = buffered
        # Lines waiting, appended without a lock (a deque's append is atomic): eight handler
        # threads logging a line each per message would otherwise queue on the handler's
        # lock, and the thread holding it can lose the GIL while it does.
        self._pending: deque[str] = deque()
        self._flusher: threading.Thread | None = None
        self._closed = False

    @property
    def stream(self) -> Any:
        """The current standard error (tests and daemons replace it)."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record and write its line (or collect it, when buffered)."""
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001  # as `handleError`: drop the line
            return
        self.write_line(line, urgent=record.levelno >= logging.WARNING)

    def write_line(self, line: str, *, urgent: bool = False) -> None:
        """Write one rendered line; buffered, it waits unless `urgent` or the buffer is full."""
        pending = self._pending
        if (  # the common case (one line per handled message) first, in one test
            not urgent
            and self.buffered
            and self._flusher is not None
            and not self._closed
            and len(pending) < BUFFER_LINES - 1
        ):
            pending.append(line)
            return
        if not self.buffered or self._closed:
            with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                self._write(line + "\n")
            return
        pending.append(line)
        if urgent or len(pending) >= BUFFER_LINES:
            self.flush()
        elif self._flusher is None:
            with self.lock:  # type: ignore[union-attr]
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._flush_loop, name="leveret-log-flush", daemon=True
                    )
                    self._flusher.start()

    def flush(self) -> None:
        """Write every line collected so far, in the order they were collected."""
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def close(self) -> None:
        """Flush, and write every later line at once."""
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
            self._closed = True
            self._write_pending()  # a line appended by a thread that had not yet seen closed
        super().close()

    def _flush_loop(self) -> None:
        try:
            while not self._closed:
                time.sleep(FLUSH_INTERVAL_S)
                self.flush()
        finally:  # (never expected) the next line starts another
            self._flusher = None

    def _write_pending(self) -> None:
        pending = self._pending
        lines = []
        try:
            while True:  # what other threads append meanwhile waits for the next flush
                lines.append(pending.popleft())
        except IndexError:
            pass
        if lines:
            lines.append("")
            self._write("\n".join(lines))

    def _write(self, text: str) -> None:
        stream = sys.stderr
        # Nowhere left to say it (closed, broken pipe): drop the lines, keep the thread.
        with contextlib.suppress(Exception):
            stream.write(text)
            stream.flush()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's waiting lines and its flusher thread."""
        self._pending = deque()
        self._flusher = None

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        """Drop the line: nowhere left to say it, and losing it beats losing the thread."""


def flush_logs() -> None:
    """Write every buffered log line now (before an exec or an exit that skips atexit)."""
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, StderrHandler):
            handler.flush()


def _after_fork_in_child() -> None:
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, StderrHandler):
            handler.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
