"""The benchmark's command: ``python -m bench [--repeat N] [--drain N] …``.

Every scenario runs on Leveret and on raw pika in the same run, alternately, on fresh
queues in the namespace ``bench-<pid>``; everything declared is deleted at the end, also
after Ctrl-C or an error. Results go to stdout (a table) and to bench/results/latest.json.
The ask scenario (request/reply, `bench.asking`) adds FastStream beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

from bench.asking.run import AskSettings, print_ask, run_ask
from bench.asking.run import summary as ask_summary
from bench.common import Settings, argument_parser, rabbitmqctl_names
from bench.iobound import print_io_bound, run_io_bound
from bench.leveret_side import LeveretBench
from bench.raw import RawBench
from bench.sink import Sink
from leveret.services import RabbitBroker
from leveret.services.observability import tracing
from leveret.services.observability.logs import configure_logging

RESULTS = Path(__file__).parent / "results" / "latest.json"
THROUGHPUT = (
    "publish_single",
    "publish_many",
    "drain",
    "drain_defaults",
    "drain_metrics",
    "drain_tracing",
    "drain_info_logs",
)
LATENCY = ("latency_p50", "latency_p99")
CPU = (
    "publish_single_cpu",
    "publish_many_cpu",
    "drain_cpu",
    "drain_defaults_cpu",
    "drain_metrics_cpu",
    "drain_tracing_cpu",
    "drain_info_logs_cpu",
)
QUEUE_SCENARIOS = {"single", "many", "drain", "observability", "latency"}
"""The scenarios `run_queue_type` runs (for each queue type); "ask" runs on its own."""
APART = ("peers", "io_bound", "ask")
"""Results that are not a queue type's."""
OBSERVED = ("drain_metrics", "drain_tracing")
"""Leveret's drain with metrics on, and with OpenTelemetry enabled and unused; compared
with its plain drain of the same run (and with raw pika's drain of the same run)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser("python -m bench", __doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each scenario")
    parser.add_argument("--single", type=int, default=2000, help="messages, one confirm each")
    parser.add_argument("--many", type=int, default=20000, help="messages, pipelined confirms")
    parser.add_argument("--drain", type=int, default=20000, help="messages waiting to drain")
    parser.add_argument("--latency", type=int, default=1000, help="messages at --rate")
    parser.add_argument("--rate", type=float, default=200.0, help="msg/s of the latency run")
    parser.add_argument("--threads", type=int, default=8, help="worker handler threads")
    parser.add_argument("--prefetch", type=int, default=200, help="prefetch (both sides)")
    parser.add_argument("--window", type=int, default=1000, help="raw pipelined confirms")
    parser.add_argument(
        "--queue-types",
        default="quorum",
        help="comma-separated: quorum, classic (default: quorum, Leveret's default)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios: single, many, drain, observability, latency, ask",
    )
    parser.add_argument(
        "--ask-requests", type=int, default=600, help="asks of the ask round trip, at --rate"
    )
    parser.add_argument(
        "--ask-seconds", type=float, default=1.5, help="seconds of each ask throughput window"
    )
    parser.add_argument("--ask-threads", type=int, default=100, help="threads asking at once")
    parser.add_argument("--ask-tasks", type=int, default=1000, help="asyncio tasks asking at once")
    parser.add_argument(
        "--ask-sides",
        default="leveret,raw,faststream",
        help="comma-separated sides of the ask scenario (default: all three)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        help="Leveret's log level (default warning: handlers log one line per message at info)",
    )
    parser.add_argument(
        "--info-logs-drain",
        action="store_true",
        help="also drain with info logs (one line per message) written to /dev/null",
    )
    parser.add_argument(
        "--defaults-drain",
        action="store_true",
        help="also drain with `leveret worker`'s defaults (prefetch 2 x threads, info logs to "
        "/dev/null) against raw pika at prefetch 100",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also drain on Dramatiq, Celery and FastStream (pip install -e '.[bench]'), each "
        "in its own worker process, --drain messages, --repeat times",
    )
    parser.add_argument(
        "--io-bound",
        action="store_true",
        help="also drain with handlers that wait 10 ms: Leveret on threads and async, and "
        "(with --peers) Dramatiq and FastStream; and the memory per message in flight",
    )
    parser.add_argument("--io-drain", type=int, default=5000, help="messages of each I/O drain")
    parser.add_argument(
        "--leveret-default-prefetch",
        action="store_true",
        help=argparse.SUPPRESS,  # the child of --defaults-drain: Leveret's own prefetch
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Tracing is measured on its own (drain_tracing): every other run has it off, as it is
    # where opentelemetry is not installed.
    os.environ[tracing.TRACING_ENV] = "off"
    tracing.reset()
    # Handlers log one line per message at info; the bench measures the framework, so it
    # logs at warning by default (as a production worker with quiet handlers would).
    configure_logging(args.log_level, buffered=True)  # as `leveret worker` does
    signal.signal(signal.SIGTERM, _raise_interrupt)
    namespace = f"bench-{os.getpid()}"
    settings = Settings(
        url=args.url,
        namespace=namespace,
        single=args.single,
        many=args.many,
        drain=args.drain,
        latency=args.latency,
        rate=args.rate,
        threads=args.threads,
        prefetch=args.prefetch,
        window=args.window,
        leveret_prefetch=None if args.leveret_default_prefetch else -1,
    )
    only = {name for name in args.only.split(",") if name}
    print(
        f"Leveret bench: namespace {namespace}, logging at {args.log_level}, "
        f"threads={args.threads}, prefetch={args.prefetch}, {args.repeat} run(s) of each scenario"
    )
    results: dict[str, Any] = {}
    try:
        if not only or only & QUEUE_SCENARIOS:
            run_all(args, settings, only, results)
        if not only or "ask" in only:
            results["ask"] = run_ask(settings, args.repeat, ask_settings(args))
            check_clean(settings.url, settings.namespace)
    except KeyboardInterrupt:
        print("interrupted: the queues and exchanges declared were deleted", file=sys.stderr)
        return 130
    if args.peers:
        results["peers"] = run_peers(settings, args.repeat)
    if args.io_bound:
        results["io_bound"] = run_io_bound(settings, args.repeat, args.io_drain, args.peers)
        check_clean(settings.url, settings.namespace)
    print()
    print_table(results)
    print_observability(results)
    print_peers(results)
    print_io_bound(results)
    print_ask(results)
    write_json(args, settings, results)
    return 0


def ask_settings(args: argparse.Namespace) -> AskSettings:
    """The ask scenario's settings from the command line."""
    return AskSettings(
        requests=args.ask_requests,
        rate=args.rate,
        seconds=args.ask_seconds,
        threads=args.ask_threads,
        tasks=args.ask_tasks,
        log_level=args.log_level,
        sides=tuple(side for side in args.ask_sides.split(",") if side),
    )


def run_all(
    args: argparse.Namespace, settings: Settings, only: set[str], results: dict[str, Any]
) -> None:
    """Every scenario for every queue type asked for, into `results`."""
    for queue_type in args.queue_types.split(","):
        results[queue_type] = run_queue_type(settings, queue_type, args.repeat, only)
        if args.info_logs_drain:
            child = drain_with_info_logs(args, queue_type)
            results[queue_type]["drain_info_logs"] = child["drain"]
            results[queue_type]["drain_info_logs_cpu"] = child["drain_cpu"]
        if args.defaults_drain:
            child = drain_with_info_logs(args, queue_type, defaults=True)
            results[queue_type]["drain_defaults"] = child["drain"]
            results[queue_type]["drain_defaults_cpu"] = child["drain_cpu"]


def run_queue_type(
    settings: Settings, queue_type: str, repeat: int, only: set[str]
) -> dict[str, dict[str, list[float]]]:
    """Every scenario `repeat` times on both sides; the samples of each, per side."""
    runs: dict[str, dict[str, list[float]]] = {
        name: {"leveret": [], "raw": []} for name in THROUGHPUT + LATENCY + CPU
    }
    sides: dict[str, Any] = {}
    try:
        sides["leveret"] = LeveretBench(settings, queue_type)
        sides["raw"] = RawBench(settings, queue_type)
        for attempt in range(1, repeat + 1):
            for scenario, method in (
                ("single", "publish_single"),
                ("many", "publish_many"),
                ("drain", "drain"),
            ):
                if only and scenario not in only:
                    continue
                for side, bench in sides.items():
                    clock = getattr(bench, method)()
                    runs[method][side].append(clock.rate)
                    runs[method + "_cpu"][side].append(clock.cpu_us)
                    print(
                        f"  {queue_type} run {attempt} {method:<15} {side:<8} "
                        f"{clock.rate:>9.0f} msg/s, {clock.cpu_us:5.1f} µs CPU/msg"
                    )
            if not only or "observability" in only:
                run_observed(sides, runs, queue_type, attempt)
            if not only or "latency" in only:
                for side, bench in sides.items():
                    p50, p99 = bench.latency()
                    runs["latency_p50"][side].append(p50)
                    runs["latency_p99"][side].append(p99)
                    print(
                        f"  {queue_type} run {attempt} latency         {side:<8} "
                        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
                    )
    finally:
        for bench in sides.values():
            _best_effort(bench.close)
        check_clean(settings.url, settings.namespace)
    return runs


def run_observed(
    sides: dict[str, Any], runs: dict[str, dict[str, list[float]]], queue_type: str, attempt: int
) -> None:
    """Leveret's drain with metrics, then with tracing enabled and unused; the raw column is
    raw pika's drain of this run (drained again if the drain scenario did not run)."""
    if len(runs["drain"]["raw"]) < attempt:
        for side, bench in sides.items():
            clock = bench.drain()
            runs["drain"][side].append(clock.rate)
            runs["drain_cpu"][side].append(clock.cpu_us)
    for method in OBSERVED:
        clock = getattr(sides["leveret"], method)()
        runs[method]["leveret"].append(clock.rate)
        runs[method + "_cpu"]["leveret"].append(clock.cpu_us)
        runs[method]["raw"].append(runs["drain"]["raw"][-1])
        runs[method + "_cpu"]["raw"].append(runs["drain_cpu"]["raw"][-1])
        print(
            f"  {queue_type} run {attempt} {method:<15} leveret  "
            f"{clock.rate:>9.0f} msg/s, {clock.cpu_us:5.1f} µs CPU/msg"
        )


PEER_MEASURES = ("drain", "publish", "latency_p50", "latency_p99")


def run_peers(settings: Settings, repeat: int) -> dict[str, dict[str, list[float]]]:
    """Each peer's no-op drain, one-at-a-time confirmed publish and latency at --rate,
    `repeat` times, taking turns."""
    from bench.peers.run import PEERS, drain, latency, publish

    runs: dict[str, dict[str, list[float]]] = {
        measure: {peer.name: [] for peer in PEERS} for measure in PEER_MEASURES
    }
    for attempt in range(1, repeat + 1):
        for peer in PEERS:
            rate = drain(peer, settings.url, settings.namespace, settings.drain)
            runs["drain"][peer.name].append(rate)
            print(f"  peers run {attempt} drain   {peer.name:<11} {rate:>9.0f} msg/s")
            rate = publish(peer, settings.url, settings.namespace, settings.single)
            runs["publish"][peer.name].append(rate)
            print(f"  peers run {attempt} publish {peer.name:<11} {rate:>9.0f} msg/s")
            p50, p99 = latency(
                peer, settings.url, settings.namespace, settings.latency, settings.rate
            )
            runs["latency_p50"][peer.name].append(p50)
            runs["latency_p99"][peer.name].append(p99)
            print(
                f"  peers run {attempt} latency {peer.name:<11} p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            )
    return runs


def print_peers(results: dict[str, Any]) -> None:
    """The peers beside Leveret and raw pika of the same invocation: best of the runs."""
    peers = results.get("peers")
    if not peers:
        return
    from bench.peers.run import PEERS

    quorum = results.get("quorum", {})

    def best(name: str, side: str, lower: bool = False) -> float | None:
        samples = quorum.get(name, {}).get(side, [])
        return (min(samples) if lower else max(samples)) if samples else None

    raw_100 = best("drain_defaults", "raw")
    baseline = raw_100 or best("drain", "raw")
    rows: list[tuple[str, float | None, float | None, float | None, float | None]] = [
        (
            "Leveret (drain: `leveret worker` defaults, info logs)",
            best("drain_defaults", "leveret"),
            best("publish_single", "leveret"),
            best("latency_p50", "leveret", True),
            best("latency_p99", "leveret", True),
        ),
        (
            "Leveret, prefetch as given, logs at warning",
            best("drain", "leveret"),
            None,
            None,
            None,
        ),
        (
            "raw pika (drain: prefetch 100 where run, else as given)",
            baseline,
            best("publish_single", "raw"),
            best("latency_p50", "raw", True),
            best("latency_p99", "raw", True),
        ),
    ]
    for peer in PEERS:
        drains = peers["drain"].get(peer.name) or []
        published = peers["publish"].get(peer.name) or []
        p50 = peers["latency_p50"].get(peer.name) or []
        p99 = peers["latency_p99"].get(peer.name) or []
        rows.append(
            (
                peer.label,
                max(drains) if drains else None,
                max(published) if published else None,
                min(p50) if p50 else None,
                min(p99) if p99 else None,
            )
        )
    print()
    print(
        f"{'no-op handler, quorum unless said (best of the runs)':<64} {'drain':>8} "
        f"{'vs raw':>7} {'publish':>8} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for label, drained, published, p50_ms, p99_ms in rows:
        ratio = f"{drained / baseline:.0%}" if drained and baseline else "-"
        print(
            f"{label[:64]:<64} {_figure(drained, 0):>8} {ratio:>7} {_figure(published, 0):>8} "
            f"{_figure(p50_ms, 2):>7} {_figure(p99_ms, 2):>7}"
        )


def _figure(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_observability(results: dict[str, Any]) -> None:
    """Each observed drain against Leveret's plain drain of the same runs (median)."""
    for queue_type, runs in results.items():
        if queue_type in APART:
            continue
        plain = runs.get("drain", {}).get("leveret", [])
        for method in OBSERVED:
            observed = runs.get(method, {}).get("leveret", [])
            if plain and observed:
                ratio = statistics.median(observed) / statistics.median(plain)
                print(
                    f"{queue_type} {method}: {statistics.median(observed):.0f} msg/s, "
                    f"{ratio:.1%} of the plain drain's {statistics.median(plain):.0f} (medians)"
                )


def drain_with_info_logs(
    args: argparse.Namespace, queue_type: str, *, defaults: bool = False
) -> dict[str, dict[str, list[float]]]:
    """The drain scenario again in a child process logging at info to /dev/null.

    A child process, because loggers keep the configuration they were first used with; its
    standard error (where the log lines go) is /dev/null. With `defaults`, Leveret runs
    with `leveret worker`'s default prefetch (2 x threads) and raw pika with prefetch 100.
    """
    output = args.output.with_name(f"info-logs-{os.getpid()}.json")
    prefetch = 100 if defaults else args.prefetch
    command = [sys.executable, "-m", "bench", "--only", "drain", "--log-level", "info"]
    command += ["--queue-types", queue_type, "--repeat", str(args.repeat)]
    command += ["--drain", str(args.drain), "--threads", str(args.threads)]
    command += ["--prefetch", str(prefetch), "--url", args.url, "--output", str(output)]
    if defaults:
        command.append("--leveret-default-prefetch")
    what = "defaults (prefetch 2 x threads, info logs)" if defaults else "info logs"
    print(f"  {queue_type} drain with {what} to /dev/null (child process)…")
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    try:
        runs: dict[str, dict[str, list[float]]] = json.loads(output.read_text())["runs"][queue_type]
    finally:
        output.unlink(missing_ok=True)
    for side, samples in runs["drain"].items():
        print(f"  {queue_type} drain, {what:<10} {side:<8} {max(samples):>9.0f} msg/s (best)")
    return runs


def _best_effort(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as exc:
        print(f"cleanup failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def remove_sink_run(broker: RabbitBroker, url: str, work_dir: Path) -> None:
    """Undo a run of processes feeding the `Sink`, each step best effort: its queue, the
    namespace's exchanges and leftovers, the broker connection and the run's files."""
    _best_effort(lambda: broker.delete(Sink))
    _best_effort(broker.delete_namespace_exchanges)
    _best_effort(broker.close)
    _best_effort(lambda: check_clean(url, broker.namespace))
    shutil.rmtree(work_dir, ignore_errors=True)


def check_clean(url: str, namespace: str) -> None:
    """Delete anything of the namespace still on the broker (needs rabbitmqctl to list)."""
    leftovers: dict[str, list[str]] = {}
    for kind in ("queues", "exchanges"):
        try:
            listed = rabbitmqctl_names(kind, timeout_s=30, check=True)
        except (OSError, subprocess.SubprocessError):
            return
        leftovers[kind] = [name for name in listed if name.startswith(namespace + ".")]
    if not leftovers["queues"] and not leftovers["exchanges"]:
        return
    print(f"deleting leftovers: {leftovers}", file=sys.stderr)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for name in leftovers["queues"]:
            channel.queue_delete(name)
        for name in leftovers["exchanges"]:
            channel.exchange_delete(name)
    finally:
        connection.close()


def summarise(samples: list[float], higher_is_better: bool) -> dict[str, float]:
    """Best, median and spread (min, max) of a scenario's samples."""
    if not samples:
        return {}
    best = max(samples) if higher_is_better else min(samples)
    return {
        "best": best,
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
    }


def print_table(results: dict[str, Any]) -> None:
    if not set(results) - set(APART):
        return  # only scenarios of their own (ask, with --only)
    header = f"{'scenario':<44} {'Leveret':>18} {'raw pika':>18} {'Leveret/raw':>12}"
    print(header)
    print("-" * len(header))
    for queue_type, runs in results.items():
        if queue_type in APART:
            continue
        for name in THROUGHPUT + LATENCY + CPU:
            throughput = name in THROUGHPUT
            if name not in runs:
                continue
            leveret = summarise(runs[name]["leveret"], throughput)
            raw = summarise(runs[name]["raw"], throughput)
            if not leveret or not raw:
                continue
            unit, digits = _unit(name)
            ratio = leveret["best"] / raw["best"]
            print(
                f"{queue_type + ' ' + name + ' (' + unit + ')':<44} "
                f"{_cell(leveret, digits):>18} {_cell(raw, digits):>18} {ratio:>11.0%}"
            )
    print("(best of the runs, [min-max] across runs; latency and CPU: lower is better)")


def _unit(name: str) -> tuple[str, int]:
    """The unit of a scenario's figures and the digits to print."""
    if name in THROUGHPUT:
        return "msg/s", 0
    if name in CPU:
        return "µs CPU/msg", 1
    return "ms", 2


def _cell(summary: dict[str, float], digits: int) -> str:
    return f"{summary['best']:.{digits}f} [{summary['min']:.{digits}f}-{summary['max']:.{digits}f}]"


def write_json(args: argparse.Namespace, settings: Settings, results: dict[str, Any]) -> None:
    summary: dict[str, Any] = {}
    for queue_type, runs in results.items():
        if queue_type == "peers":
            summary["peers"] = {
                measure: {
                    name: summarise(samples, not measure.startswith("latency"))
                    for name, samples in by_peer.items()
                }
                for measure, by_peer in runs.items()
            }
            continue
        if queue_type == "ask":
            summary["ask"] = ask_summary(runs)
            continue
        if queue_type == "io_bound":
            summary["io_bound"] = {
                name: summarise(samples, True) for name, samples in runs["drain"].items()
            }
            summary["io_bound_memory"] = runs["memory"]
            continue
        for name, sides in runs.items():
            throughput = name in THROUGHPUT
            leveret = summarise(sides["leveret"], throughput)
            raw = summarise(sides["raw"], throughput)
            if leveret and raw:
                summary[f"{queue_type}.{name}"] = {
                    "leveret": leveret,
                    "raw": raw,
                    "ratio": leveret["best"] / raw["best"],
                }
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "rabbitmq": _rabbitmq_version(),
        },
        "settings": {**dataclasses.asdict(settings), "url": None, "repeat": args.repeat},
        "logging": args.log_level,
        "summary": summary,
        "runs": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {args.output}")


def _rabbitmq_version() -> str | None:
    try:
        return subprocess.run(
            ["rabbitmqctl", "-q", "version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
