"""The ask scenario's load patterns, the same for every side.

- Round trip at a steady rate: one caller asks at ``--rate`` requests a second (each no
  earlier than its slot), timing each ask from the call to its checked answer.
- Throughput: N callers (threads, or asyncio tasks on one event loop) ask back to back;
  after a warm-up of `WARMUP_S`, the answers that arrive within the window are counted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from bench.common import pace

WARMUP_S = 0.5
"""Asks before the window are not counted: connections, first declarations, the
responder's prefetch rising."""
WARMUP_ASKS = 20
"""Asks before a latency run's first timed one."""


class SyncCaller(Protocol):
    """One thread's way to ask: returns once the answer came and was checked."""

    def ask(self, seq: int) -> None: ...

    def close(self) -> None: ...


class AsyncCaller(Protocol):
    """An event loop's way to ask, from any number of its tasks at once."""

    async def ask(self, seq: int) -> None: ...

    async def close(self) -> None: ...


def latency_sync(caller: SyncCaller, count: int, rate: float) -> list[float]:
    """Seconds each of `count` asks took, asked at `rate` a second."""
    for seq in range(WARMUP_ASKS):
        caller.ask(seq)
    samples: list[float] = []
    for seq in pace(rate, count):
        started = time.perf_counter()
        caller.ask(seq)
        samples.append(time.perf_counter() - started)
    return samples


async def latency_async(caller: AsyncCaller, count: int, rate: float) -> list[float]:
    """`latency_sync`, awaited on the running loop."""
    for seq in range(WARMUP_ASKS):
        await caller.ask(seq)
    samples: list[float] = []
    start = time.perf_counter()
    for seq in range(count):
        delay = start + seq / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        started = time.perf_counter()
        await caller.ask(seq)
        samples.append(time.perf_counter() - started)
    return samples


def throughput_threads(callers: Sequence[SyncCaller], seconds: float) -> float:
    """Answers a second with a thread per caller asking back to back.

    Raises:
        Exception: The first error a thread's ask raised (the others stop at the window's end).
    """
    counts = [0] * len(callers)
    errors: list[BaseException] = []
    window: list[float] = []
    ready = threading.Barrier(len(callers) + 1)

    def run(index: int) -> None:
        caller = callers[index]
        ready.wait()
        opens, closes = window
        counted = 0
        seq = index
        try:
            while True:
                caller.ask(seq)
                now = time.perf_counter()
                if now >= closes:
                    break
                if now >= opens:
                    counted += 1
                seq += len(callers)
        except BaseException as exc:
            errors.append(exc)
        counts[index] = counted

    threads = [
        threading.Thread(target=run, args=(index,), name=f"asker-{index}", daemon=True)
        for index in range(len(callers))
    ]
    for thread in threads:
        thread.start()
    opens = time.perf_counter() + WARMUP_S
    window.extend((opens, opens + seconds))
    ready.wait()
    for thread in threads:
        thread.join(seconds + WARMUP_S + 30)
    if errors:
        raise errors[0]
    return sum(counts) / seconds


async def throughput_tasks(caller: AsyncCaller, tasks: int, seconds: float) -> float:
    """Answers a second with `tasks` tasks of the running loop asking back to back."""
    opens = time.perf_counter() + WARMUP_S
    closes = opens + seconds

    async def run(index: int) -> int:
        counted = 0
        seq = index
        while True:
            await caller.ask(seq)
            now = time.perf_counter()
            if now >= closes:
                return counted
            if now >= opens:
                counted += 1
            seq += tasks

    counts = await asyncio.gather(*(run(index) for index in range(tasks)))
    return sum(counts) / seconds
