"""Run the ask scenario: start each side's responder, take turns, print the table.

Every side asks in the same run, taking turns measure by measure, so that all see the same
machine. Each responder is its framework's own worker in a process of its own, started
once and stopped at the end; each side's queue is in the run's namespace and deleted
afterwards (the responders are stopped first, so that none declares its queue again).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pika

from bench.asking import load
from bench.asking.load import AsyncCaller, SyncCaller
from bench.common import Settings, percentile

ROOT = Path(__file__).resolve().parents[2]
MEASURES = ("latency_p50", "latency_p99", "one_caller", "threads", "tasks")
LATENCY = ("latency_p50", "latency_p99")


@dataclass(frozen=True)
class AskSettings:
    """The scenario's parameters (``--ask-*`` and ``--rate``)."""

    requests: int
    rate: float
    seconds: float
    threads: int
    tasks: int
    log_level: str
    sides: tuple[str, ...] = ("leveret", "raw", "faststream")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


class Side(ABC):
    """One framework: its responder process, its callers, its queue."""

    key: str
    label: str
    native: str = "sync"
    """How its single caller asks (latency, one caller): ``sync`` or ``async``."""

    def __init__(self, settings: Settings, queue: str) -> None:
        self.url = settings.url
        self.queue = queue
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix=f"bench-ask-{self.key}-", suffix=".log")[1])

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str]]:
        """The responder's command line (after the interpreter) and its environment."""

    @abstractmethod
    def sync_callers(self, count: int) -> list[SyncCaller]:
        """`count` callers, one for each thread (some sides share one)."""

    def close_sync(self, callers: Sequence[SyncCaller]) -> None:
        for caller in {id(caller): caller for caller in callers}.values():
            caller.close()

    @abstractmethod
    async def async_caller(self) -> AsyncCaller | None:
        """The event loop's caller (None: this side has none)."""

    @abstractmethod
    def delete(self) -> None:
        """Delete the side's queue (and whatever else it declared)."""

    def start(self) -> None:
        command, env = self.command()
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, *command],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                stdout=output,
                stderr=output,
            )

    def wait_consuming(self, timeout_s: float = 60) -> None:
        """Until the responder consumes its queue."""
        deadline = time.monotonic() + timeout_s
        while not _consumers(self.url, self.queue):
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the {self.key} responder exited: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.key} responder is not consuming: {self._log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.log.unlink(missing_ok=True)

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def _consumers(url: str, queue: str) -> int:
    """Consumers of `queue` (0 while it does not exist)."""
    pika_logger = logging.getLogger("pika")
    level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)  # it warns of the channel a missing queue closes
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()
        pika_logger.setLevel(level)


def _delete_queue(url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


class LeveretSide(Side):
    """``leveret worker`` (its defaults); ``broker.ask`` and ``broker.ask_async``."""

    key = "leveret"

    def __init__(self, settings: Settings, log_level: str) -> None:
        from leveret.services import RabbitBroker

        self.namespace = f"{settings.namespace}.ask"
        super().__init__(settings, f"{self.namespace}.quote")
        self.label = f"Leveret {_version('leveret')}"
        self.log_level = log_level
        self.broker = RabbitBroker(settings.url, namespace=self.namespace)

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [
            *("-m", "leveret.services.cli", "worker", "bench.asking.leveret_side"),
            *("--broker-url", self.url, "--namespace", self.namespace),
            *("--log-level", self.log_level),
        ], {}

    def sync_callers(self, count: int) -> list[SyncCaller]:
        from bench.asking.leveret_side import LeveretCaller

        return [LeveretCaller(self.broker)] * count

    async def async_caller(self) -> AsyncCaller | None:
        from bench.asking.leveret_side import LeveretAsyncCaller

        return LeveretAsyncCaller(self.broker)

    def delete(self) -> None:
        from bench.asking.leveret_side import Quoter

        try:
            self.broker.delete(Quoter)
            self.broker.delete_namespace_exchanges()
        finally:
            self.broker.close()


class RawSide(Side):
    """A plain pika consumer that replies; ``BlockingConnection`` callers, a connection per
    thread; aio-pika for asyncio."""

    key = "raw"

    def __init__(self, settings: Settings) -> None:
        from bench.asking.raw import aio_pika_installed

        super().__init__(settings, f"{settings.namespace}.raw-ask")
        self.aio_pika = aio_pika_installed()
        self.label = f"raw pika {_version('pika')}" + (
            f" (asyncio: aio-pika {_version('aio-pika')})" if self.aio_pika else ""
        )

    def command(self) -> tuple[list[str], dict[str, str]]:
        return ["-m", "bench.asking.raw", self.url, self.queue], {}

    def sync_callers(self, count: int) -> list[SyncCaller]:
        from bench.asking.raw import RawCaller

        callers: list[SyncCaller] = []
        try:
            for _ in range(count):
                callers.append(RawCaller(self.url, self.queue))
        except BaseException:
            self.close_sync(callers)
            raise
        return callers

    async def async_caller(self) -> AsyncCaller | None:
        if not self.aio_pika:
            return None
        from bench.asking.raw import RawAsyncCaller

        return await RawAsyncCaller.open(self.url, self.queue)

    def delete(self) -> None:
        _delete_queue(self.url, self.queue)


class FastStreamSide(Side):
    """``faststream run`` of a subscriber returning a model; ``RabbitBroker.request``."""

    key = "faststream"
    native = "async"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, f"{settings.namespace}.faststream-ask")
        self.label = f"FastStream {_version('faststream')}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return ["-m", "faststream", "run", "bench.asking.faststream_app:app"], {
            "BENCH_ASK_URL": self.url,
            "BENCH_ASK_QUEUE": self.queue,
        }

    def sync_callers(self, count: int) -> list[SyncCaller]:
        from bench.asking.faststream_app import FastStreamLoop

        return [FastStreamLoop(self.url, self.queue)] * count

    async def async_caller(self) -> AsyncCaller | None:
        from bench.asking.faststream_app import FastStreamAsyncCaller

        return await FastStreamAsyncCaller.open(self.url, self.queue)

    def delete(self) -> None:
        _delete_queue(self.url, self.queue)


def faststream_installed() -> bool:
    try:
        import faststream.rabbit  # noqa: F401
    except ImportError:
        return False
    return True


def measure(side: Side, name: str, ask: AskSettings) -> dict[str, float] | None:
    """One measure on one side: {measure: figure}, or None where the side has no way."""
    if name == "latency":
        if side.native == "async":
            samples = asyncio.run(_with_async(side, load.latency_async, ask.requests, ask.rate))
        else:
            samples = _with_sync(side, 1, lambda c: load.latency_sync(c[0], ask.requests, ask.rate))
        return {
            "latency_p50": percentile(samples, 0.50) * 1000,
            "latency_p99": percentile(samples, 0.99) * 1000,
        }
    if name == "one_caller" and side.native == "async":
        rate = asyncio.run(_with_async(side, load.throughput_tasks, 1, ask.seconds))
    elif name == "one_caller":
        rate = _with_sync(side, 1, lambda c: load.throughput_threads(c, ask.seconds))
    elif name == "threads":
        rate = _with_sync(side, ask.threads, lambda c: load.throughput_threads(c, ask.seconds))
    else:
        rate = asyncio.run(_with_async(side, load.throughput_tasks, ask.tasks, ask.seconds))
    return None if rate is None else {name: rate}


def _with_sync(side: Side, count: int, run: Any) -> Any:
    callers = side.sync_callers(count)
    try:
        return run(callers)
    finally:
        side.close_sync(callers)


async def _with_async(side: Side, run: Any, *args: Any) -> Any:
    caller = await side.async_caller()
    if caller is None:
        return None
    try:
        return await run(caller, *args)
    finally:
        await caller.close()


def run_ask(settings: Settings, repeat: int, ask: AskSettings) -> dict[str, Any]:
    """Every measure `repeat` times on every side, taking turns; the samples and labels."""
    sides: list[Side] = []
    notes: list[str] = []
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in MEASURES}
    try:
        if "leveret" in ask.sides:
            sides.append(LeveretSide(settings, ask.log_level))
        if "raw" in ask.sides:
            raw = RawSide(settings)
            sides.append(raw)
            if not raw.aio_pika:
                notes.append(
                    "aio-pika is not installed: raw pika has no asyncio row (pika has no "
                    "asyncio client of its own; aio-pika comes with the bench extra's FastStream)"
                )
        if "faststream" in ask.sides and faststream_installed():
            sides.append(FastStreamSide(settings))
        elif "faststream" in ask.sides:
            notes.append("FastStream is not installed (the bench extra): no FastStream column")
        for side in sides:
            side.start()
        for side in sides:
            side.wait_consuming()
        for attempt in range(1, repeat + 1):
            for name in ("latency", "one_caller", "threads", "tasks"):
                for side in sides:
                    figures = measure(side, name, ask)
                    for key, value in (figures or {}).items():
                        runs[key].setdefault(side.key, []).append(value)
                    print(
                        f"  ask run {attempt} {_what(name, ask):<28} {side.key:<11} "
                        + _said(figures)
                    )
    finally:
        for side in sides:
            _best_effort(side.stop)
        for side in sides:
            _best_effort(side.delete)
    return {
        "runs": runs,
        "labels": {side.key: side.label for side in sides},
        "notes": notes,
        "settings": {**ask.__dict__},
    }


def _what(name: str, ask: AskSettings) -> str:
    return {
        "latency": f"round trip at {ask.rate:.0f}/s",
        "one_caller": "1 caller",
        "threads": f"{ask.threads} threads",
        "tasks": f"{ask.tasks} asyncio tasks",
    }[name]


def _said(figures: dict[str, float] | None) -> str:
    if figures is None:
        return "-"
    if "latency_p50" in figures:
        return f"p50 {figures['latency_p50']:.2f} ms, p99 {figures['latency_p99']:.2f} ms"
    return f"{next(iter(figures.values())):>8.0f} asks/s"


def _best_effort(action: Any) -> None:
    try:
        action()
    except Exception as exc:
        print(f"cleanup failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def _best(samples: list[float], name: str) -> float:
    return min(samples) if name in LATENCY else max(samples)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Best, median and spread of every measure on every side, and the goals of issue 27."""
    out: dict[str, Any] = {}
    for name, by_side in results["runs"].items():
        out[name] = {
            side: {
                "best": _best(samples, name),
                "median": statistics.median(samples),
                "min": min(samples),
                "max": max(samples),
            }
            for side, samples in by_side.items()
            if samples
        }
    out["goals"] = goals(out)
    return out


def goals(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 27's goals, on the best of the runs: Leveret's p50 within 1.3x raw pika's,
    its throughput with the concurrent callers at least 80% of raw pika's and ahead of
    FastStream's."""

    def best(name: str, side: str) -> float | None:
        found = figures.get(name, {}).get(side)
        return None if found is None else float(found["best"])

    out: dict[str, dict[str, Any]] = {}
    leveret, raw = best("latency_p50", "leveret"), best("latency_p50", "raw")
    if leveret and raw:
        out["p50_within_1.3x_raw"] = {"ratio": leveret / raw, "met": leveret <= 1.3 * raw}
    for name in ("threads", "tasks"):
        leveret, raw = best(name, "leveret"), best(name, "raw")
        faststream = best(name, "faststream")
        if leveret and raw:
            out[f"{name}_at_least_80%_raw"] = {"ratio": leveret / raw, "met": leveret >= 0.8 * raw}
        if leveret and faststream:
            out[f"{name}_ahead_of_faststream"] = {
                "ratio": leveret / faststream,
                "met": leveret > faststream,
            }
    return out


def print_ask(results: dict[str, Any]) -> None:
    """The ask table: best of the runs, [min-max], and the goals."""
    ask = results.get("ask")
    if not ask:
        return
    settings = ask["settings"]
    figures = summary(ask)
    sides = list(ask["labels"])
    rows = {
        "latency_p50": f"round trip p50 at {settings['rate']:.0f}/s (ms)",
        "latency_p99": f"round trip p99 at {settings['rate']:.0f}/s (ms)",
        "one_caller": "1 caller (asks/s)",
        "threads": f"{settings['threads']} threads at once (asks/s)",
        "tasks": f"{settings['tasks']:,} asyncio tasks at once (asks/s)",
    }
    print()
    header = f"{'ask (request/reply), best of the runs':<40}"
    header += "".join(f" {side:>22}" for side in sides) + f" {'Leveret/raw':>12}"
    print(header)
    print("-" * len(header))
    for name, label in rows.items():
        line = f"{label:<40}"
        digits = 2 if name in LATENCY else 0
        for side in sides:
            found = figures[name].get(side)
            line += f" {_cell(found, digits):>22}"
        leveret, raw = figures[name].get("leveret"), figures[name].get("raw")
        ratio = f"{leveret['best'] / raw['best']:.0%}" if leveret and raw else "-"
        print(f"{line} {ratio:>12}")
    for side, label in ask["labels"].items():
        print(f"  {side}: {label}")
    print(
        f"  raw pika, threads: a BlockingConnection per thread ({settings['threads']} "
        "connections); FastStream, threads: one event loop thread, each thread's request "
        "handed to it (run_coroutine_threadsafe)"
    )
    for note in ask["notes"]:
        print(f"  note: {note}")
    for goal, outcome in figures["goals"].items():
        print(f"  goal {goal}: {outcome['ratio']:.0%}, {'met' if outcome['met'] else 'MISSED'}")


def _cell(found: dict[str, float] | None, digits: int) -> str:
    if not found:
        return "-"
    return f"{found['best']:.{digits}f} [{found['min']:.{digits}f}-{found['max']:.{digits}f}]"
