"""The actor the soak and scaling runs consume with, and the files that count its work.

Every handled message appends ``<seq> <time.time()>`` to ``$LEVERET_BENCH_RECORD_DIR/<pid>``
(one file per process, one ``os.write`` per line: a SIGKILL never leaves half a line, and
what was written before it stays). The raw-pika consumers of the scaling run write the same
lines, so both sides pay the same cost. `Tally` reads the files as they grow.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pika

from leveret.actors import Actor, handler
from leveret.schemas import Message

RECORD_DIR_ENV = "LEVERET_BENCH_RECORD_DIR"
_fd: int | None = None


class Tick(Message, topic="bench.tick"):
    """One soak or scaling message: its sequence number."""

    seq: int
    payload: str = ""


def record(seq: int) -> None:
    """Append one handled `seq` to this process's record file."""
    global _fd
    if _fd is None:
        path = Path(os.environ[RECORD_DIR_ENV]) / str(os.getpid())
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{seq} {time.time():.6f}\n".encode())


class Sink(Actor, queue="sink"):
    """Records each message it handles; nothing else."""

    @handler
    def tick(self, msg: Tick) -> None:
        record(msg.seq)


def raw_consume(url: str, queue: str, prefetch: int, record_dir: str) -> None:
    """A raw-pika consumer process: json.loads, record, ack each message, until killed."""
    os.environ[RECORD_DIR_ENV] = record_dir
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)

    def on_message(ch: object, method: object, _props: object, body: bytes) -> None:
        record(json.loads(body)["seq"])
        channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

    channel.basic_consume(queue, on_message)
    channel.start_consuming()


class Tally:
    """Reads the record files of a directory incrementally: seqs seen, first and last time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: set[int] = set()
        self.lines = 0
        self.first = float("inf")
        self.last = 0.0
        self._offsets: dict[Path, int] = {}

    def update(self) -> int:
        """Read what was appended since the last call; return the distinct seqs seen."""
        for path in self.directory.iterdir():
            offset = self._offsets.get(path, 0)
            with path.open("rb") as file:
                file.seek(offset)
                chunk = file.read()
            end = chunk.rfind(b"\n") + 1  # a line being written is read next time
            self._offsets[path] = offset + end
            for line in chunk[:end].splitlines():
                seq, at = line.split()
                self.seen.add(int(seq))
                self.lines += 1
                when = float(at)
                self.first = min(self.first, when)
                self.last = max(self.last, when)
        return len(self.seen)

    @property
    def duplicates(self) -> int:
        """Lines beyond the first for a seq: messages handled more than once."""
        return self.lines - len(self.seen)
