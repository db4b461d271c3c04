"""Soak: ``python -m bench.soak [--messages N] [--processes P] [--kill-interval S]``.

Runs ``leveret worker bench.sink --processes P`` (the supervisor), publishes N messages while
it consumes, and SIGKILLs one random child of that supervisor every few seconds (only its
children, checked by parent pid just before the kill). At the end it reports messages lost
(published sequence numbers never handled: must be 0), duplicates (handled more than once,
as at-least-once allows after a kill), throughput, and each child's peak RSS (``VmHWM`` from
``/proc/<pid>/status``, read until just before it is killed and at the end).

Everything lives in the namespace ``soak-<pid>`` and is deleted at the end, also after
Ctrl-C, SIGTERM or an error. A summary is printed; JSON goes to bench/results/soak-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import argument_parser
from bench.run import _best_effort, _rabbitmq_version, _raise_interrupt, remove_sink_run
from bench.sink import RECORD_DIR_ENV, Sink, Tally, Tick
from leveret.services import RabbitBroker, config
from leveret.services.observability.logs import configure_logging
from leveret.services.topology import naming

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "soak-latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser("python -m bench.soak", __doc__)
    parser.add_argument("--messages", type=int, default=200_000, help="messages to publish")
    parser.add_argument("--processes", type=int, default=4, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="handler threads per process")
    parser.add_argument(
        "--kill-interval", type=float, default=3.0, help="mean seconds between SIGKILLs"
    )
    parser.add_argument("--batch", type=int, default=2000, help="messages per publish_many")
    parser.add_argument(
        "--stall-timeout", type=float, default=120.0, help="give up after no progress for this"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def children_of(pid: int) -> list[int]:
    """The pids of the live children of `pid` (its main thread's)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def parent_of(pid: int) -> int | None:
    """The parent pid of `pid`, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def peak_rss_kb(pid: int) -> int | None:
    """``VmHWM`` of `pid` in kB (its peak resident set), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Soak:
    """One soak run; `run` returns the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.namespace = f"soak-{os.getpid()}"
        self.work_dir = Path(tempfile.mkdtemp(prefix="leveret-soak-"))
        self.record_dir = self.work_dir / "handled"
        self.record_dir.mkdir()
        self.tally = Tally(self.record_dir)
        self.peaks: dict[int, int] = {}
        self.killed: list[int] = []
        self.published = 0
        self.publish_error: BaseException | None = None
        self.broker = RabbitBroker(args.url, namespace=self.namespace)
        self.supervisor: subprocess.Popen[bytes] | None = None
        self._next_kill = 0.0
        self.log_path = self.work_dir / "supervisor.log"

    def run(self) -> dict[str, Any]:
        args = self.args
        self.broker.declare(Sink)
        self.supervisor = self._start_supervisor()
        began = time.perf_counter()
        publisher = threading.Thread(target=self._publish, name="soak-publisher", daemon=True)
        publisher.start()
        self._next_kill = time.monotonic() + random.uniform(0.5, 1.5) * args.kill_interval
        progress_at, last_count = time.monotonic(), 0
        report_at = progress_at + 10
        while True:
            count = self.tally.update()
            self._sample_peaks()
            now = time.monotonic()
            if count != last_count:
                progress_at, last_count = now, count
            if count >= args.messages:
                break
            if self.publish_error is not None:
                raise RuntimeError(f"publishing failed: {self.publish_error}")
            if self.supervisor.poll() is not None:
                raise RuntimeError(f"the supervisor exited with {self.supervisor.returncode}")
            if now - progress_at > args.stall_timeout:
                break  # report what was lost
            self._maybe_kill(now)
            if now >= report_at:
                report_at = now + 10
                print(f"  handled {count:>8}/{args.messages}, kills {len(self.killed)}", flush=True)
            time.sleep(0.2)
        elapsed = time.perf_counter() - began
        publisher.join(60)
        self._sample_peaks()
        exit_code = self._stop_supervisor()
        self.tally.update()
        return self._report(elapsed, exit_code)

    def _start_supervisor(self) -> subprocess.Popen[bytes]:
        args = self.args
        command = [sys.executable, "-m", "leveret.services.cli", "worker", "bench.sink"]
        command += ["--processes", str(args.processes), "--threads", str(args.threads)]
        command += ["--namespace", self.namespace, "--log-level", "warning"]
        command += ["--log-format", "json", "--shutdown-timeout", "10"]
        env = {
            **os.environ,
            RECORD_DIR_ENV: str(self.record_dir),
            config.BROKER_URL_ENV: args.url,
            "PYTHONPATH": str(ROOT),
        }
        with self.log_path.open("wb") as log:
            return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)

    def _publish(self) -> None:
        try:
            for start in range(0, self.args.messages, self.args.batch):
                end = min(self.args.messages, start + self.args.batch)
                self.broker.publish_many(Tick(seq=seq) for seq in range(start, end))
                self.published = end
        except BaseException as exc:
            self.publish_error = exc

    def _sample_peaks(self) -> None:
        assert self.supervisor is not None
        for pid in children_of(self.supervisor.pid):
            peak = peak_rss_kb(pid)
            if peak is not None:
                self.peaks[pid] = max(peak, self.peaks.get(pid, 0))

    def _maybe_kill(self, now: float) -> None:
        """Called every 0.2 s: kill a worker child every `kill_interval` or so."""
        if now >= self._next_kill:
            self._kill_one()
            self._next_kill = now + random.uniform(0.5, 1.5) * self.args.kill_interval

    def _kill_one(self) -> None:
        assert self.supervisor is not None
        children = children_of(self.supervisor.pid)
        if not children:
            return
        victim = random.choice(children)
        peak = peak_rss_kb(victim)
        if parent_of(victim) != self.supervisor.pid:
            return  # gone and its pid reused meanwhile: not ours to kill
        if peak is not None:
            self.peaks[victim] = max(peak, self.peaks.get(victim, 0))
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.killed.append(victim)

    def _ensure_stopped(self) -> None:
        self._stop_supervisor()

    def _stop_supervisor(self) -> int | None:
        supervisor = self.supervisor
        if supervisor is None or supervisor.poll() is not None:
            return None if supervisor is None else supervisor.returncode
        children = children_of(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        try:
            return supervisor.wait(60)
        except subprocess.TimeoutExpired:
            for pid in children:
                if parent_of(pid) == supervisor.pid:
                    os.kill(pid, signal.SIGKILL)
            supervisor.kill()
            supervisor.wait(10)
            return None

    def _report(self, elapsed: float, exit_code: int | None) -> dict[str, Any]:
        messages = self.args.messages
        lost = messages - len(self.tally.seen & set(range(messages)))
        dlq = self.broker.message_count(naming.dlq_name(self.namespace, Sink.queue))
        peaks_mb = sorted(round(kb / 1024, 1) for kb in self.peaks.values())
        restarts = self.log_path.read_text(errors="replace").count('"worker_child_died"')
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "rabbitmq": _rabbitmq_version()},
            "settings": {k: v for k, v in vars(self.args).items() if k not in ("url", "output")},
            "published": self.published,
            "handled_distinct": len(self.tally.seen),
            "lost": lost,
            "duplicates": self.tally.duplicates,
            "dead_lettered": dlq,
            "kills": len(self.killed),
            "restarts_logged": restarts,
            "elapsed_s": round(elapsed, 1),
            "throughput_msg_s": round(len(self.tally.seen) / elapsed),
            "supervisor_exit_code": exit_code,
            "workers": len(self.peaks),
            "peak_rss_mb": {
                "max": max(peaks_mb, default=0.0),
                "median": round(statistics.median(peaks_mb), 2) if peaks_mb else 0.0,
                "each": peaks_mb,
            },
        }

    def close(self) -> None:
        """Stop the supervisor if still running; delete the namespace; remove the files."""
        _best_effort(self._ensure_stopped)
        remove_sink_run(self.broker, self.args.url, self.work_dir)


def run_to_the_end(soak: Soak) -> dict[str, Any] | None:
    """Run `soak` and close it: its report, or None when Ctrl-C interrupted it."""
    try:
        return soak.run()
    except KeyboardInterrupt:
        print("\ninterrupted: the queues and exchanges declared were deleted", file=sys.stderr)
        return None
    finally:
        soak.close()


def write_report(report: dict[str, Any], output: Path) -> None:
    """Write `report` as JSON to `output`, and say where."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {output}")


def print_summary(report: dict[str, Any]) -> None:
    peaks = report["peak_rss_mb"]
    print(f"published          {report['published']:>10}")
    print(f"handled (distinct) {report['handled_distinct']:>10}")
    print(f"lost               {report['lost']:>10}")
    print(f"duplicates         {report['duplicates']:>10}")
    print(f"dead-lettered      {report['dead_lettered']:>10}")
    print(
        f"children killed    {report['kills']:>10}  (restarts logged {report['restarts_logged']})"
    )
    print(f"elapsed            {report['elapsed_s']:>10} s")
    print(f"throughput         {report['throughput_msg_s']:>10} msg/s")
    print(f"peak RSS per child {peaks['median']:>10} MB median, {peaks['max']} MB max")
    print(f"                   over {report['workers']} worker processes: {peaks['each']}")
    print(f"supervisor exit    {report['supervisor_exit_code']!s:>10}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("warning")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    soak = Soak(args)
    print(
        f"Leveret soak: namespace {soak.namespace}, {args.messages} messages, "
        f"{args.processes} processes x {args.threads} threads, a SIGKILL every "
        f"~{args.kill_interval}s"
    )
    report = run_to_the_end(soak)
    if report is None:
        return 130
    print_summary(report)
    write_report(report, args.output)
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
