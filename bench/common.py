"""What both sides of the benchmark share: the message, its body, the settings, the timer."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

TOPIC = "bench.ping"
PAYLOAD = "x" * 64
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def argument_parser(prog: str | None, description: str | None) -> argparse.ArgumentParser:
    """A bench module's command line, with the --url of the RabbitMQ it runs against."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--url", default=DEFAULT_URL)
    return parser


def rabbitmqctl_names(kind: str, *, timeout_s: float, check: bool) -> list[str]:
    """The names of the broker's `kind` (``queues``, ``exchanges``), from ``rabbitmqctl``.

    Raises:
        subprocess.CalledProcessError: rabbitmqctl failed (with `check`; without it, the
            names are those it printed, often none).
    """
    listed = subprocess.run(
        ["rabbitmqctl", "-q", f"list_{kind}", "name"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=check,
    ).stdout
    return [line for line in listed.split() if line != "name"]


@dataclass(frozen=True, slots=True)
class Settings:
    """One benchmark run's parameters (the same for Leveret and for raw pika)."""

    url: str
    namespace: str
    single: int
    many: int
    drain: int
    latency: int
    rate: float
    threads: int
    prefetch: int
    window: int
    leveret_prefetch: int | None = -1
    """Leveret's prefetch: -1 for `prefetch` (as raw pika), None for Leveret's default."""

    def leveret_prefetch_or_default(self) -> int | None:
        """The prefetch Leveret's workers get (None: `leveret worker`'s default)."""
        return self.prefetch if self.leveret_prefetch == -1 else self.leveret_prefetch


@dataclass(slots=True)
class Clock:
    """Wall-clock and process CPU time of one timed scenario of `count` messages.

    CPU time per message is the steadier figure on a shared machine: it does not count the
    time spent waiting for the broker or for a CPU another process holds.
    """

    count: int
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def start(self) -> None:
        self.wall_s = -time.perf_counter()
        self.cpu_s = -time.process_time()

    def stop(self) -> None:
        self.wall_s += time.perf_counter()
        self.cpu_s += time.process_time()

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.count / self.wall_s

    @property
    def cpu_us(self) -> float:
        """Microseconds of this process's CPU (every thread) per message."""
        return self.cpu_s / self.count * 1e6


def raw_body(seq: int) -> bytes:
    """The JSON body the raw baseline publishes: the same fields as Leveret's `Ping`."""
    return json.dumps({"seq": seq, "sent_at": time.time(), "payload": PAYLOAD}).encode()


def raw_message_id() -> str:
    """A message id like Leveret's, so that both sides build the same properties."""
    return uuid.uuid4().hex


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition()` every millisecond until true.

    Raises:
        TimeoutError: It did not become true within `timeout_s`.
    """
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.001)


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def pace(rate: float, count: int) -> Iterator[int]:
    """Yield 0…count-1, each no earlier than its slot at `rate` per second."""
    start = time.perf_counter()
    for seq in range(count):
        delay = start + seq / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield seq
