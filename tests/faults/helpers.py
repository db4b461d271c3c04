"""Helpers of the fault tests: the record file of `tests.sample_actors.Jobs`, worker spawner."""

from __future__ import annotations

from collections.abc import Callable

from tests.sample_actors import read_record
from tests.support import WorkerProcess

Spawn = Callable[..., WorkerProcess]
"""The `spawn` fixture: starts a subprocess worker of `tests.sample_actors`."""


def events(record: str, event: str, n: int | None = None) -> list[tuple[str, int, int, str]]:
    """The recorded `event` lines (``start``/``done``), for job `n` when given."""
    return [
        line for line in read_record(record) if line[0] == event and (n is None or line[1] == n)
    ]


def done_numbers(record: str) -> set[int]:
    """The job numbers with at least one ``done`` line."""
    return {line[1] for line in events(record, "done")}
