"""Cluster soak: ``python -m bench.cluster_soak [--messages N] [--kill-interval S]``.

On the three-node cluster of ``scripts/cluster`` (started here unless it runs already, and
then stopped again), runs ``leveret worker bench.sink --processes P`` against all three
nodes' URLs, publishes N messages (``publish_many`` batches, a batch not confirmed is
published again) and, every few seconds, SIGKILLs the node leading the sink's queue, then
starts it again. At the end it reports messages lost (confirmed sequence numbers never
handled: must be 0), duplicates, and for each kill: how long handling stopped (the longest
gap between two handled messages in the 30 s after it) and how long the node took to
rejoin with the queue's three members online.

Everything lives in the namespace ``soak-<pid>`` and is deleted at the end. JSON goes to
bench/results/cluster-soak-latest.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.run import _best_effort, _raise_interrupt
from bench.sink import Sink, Tick
from bench.soak import Soak, print_summary, run_to_the_end, write_report
from leveret.schemas.errors import PublishError
from leveret.services.observability.logs import configure_logging
from leveret.services.topology import naming

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cluster"
RESULTS = Path(__file__).parent / "results" / "cluster-soak-latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_soak", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages to publish")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="handler threads per process")
    parser.add_argument(
        "--kill-interval",
        type=float,
        default=8.0,
        help="seconds from a node's restart to the next kill",
    )
    parser.add_argument("--batch", type=int, default=1000, help="messages per publish_many")
    parser.add_argument(
        "--stall-timeout", type=float, default=180.0, help="give up after no progress for this"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def cluster(*args: str, timeout_s: float = 300) -> str:
    """Run ``scripts/cluster`` with `args`; its standard output."""
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/cluster {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def node_running(node: int) -> bool:
    return (
        subprocess.run(
            [str(SCRIPT), "ctl", str(node), "-q", "status"], capture_output=True, timeout=60
        ).returncode
        == 0
    )


def queue_row(queue: str) -> dict[str, Any]:
    """The queue's leader, members and online members, as a running node sees them."""
    live = next(node for node in (1, 2, 3) if node_running(node))
    out = cluster(
        "ctl",
        str(live),
        "-q",
        "list_queues",
        "name",
        "leader",
        "members",
        "online",
        "--formatter",
        "json",
    )
    return next(row for row in json.loads(out) if row["name"] == queue)


class ClusterSoak(Soak):
    """The soak of `bench.soak`, with cluster nodes killed instead of worker processes."""

    def __init__(self, args: argparse.Namespace) -> None:
        args.url = cluster("urls").strip()
        super().__init__(args)
        self.queue = naming.queue_name(self.namespace, Sink.queue)
        self.kills: list[dict[str, Any]] = []
        self.publish_retries = 0
        self._down: tuple[int, float] | None = None  # node killed, when

    def _publish(self) -> None:
        """Each batch until confirmed: one the cluster did not confirm is published again
        (a retry of a batch partly stored shows up as duplicates, never as a loss)."""
        try:
            for start in range(0, self.args.messages, self.args.batch):
                end = min(self.args.messages, start + self.args.batch)
                while True:
                    try:
                        self.broker.publish_many(
                            (Tick(seq=seq) for seq in range(start, end)), timeout=30
                        )
                        break
                    except PublishError:
                        self.publish_retries += 1
                        time.sleep(0.5)
                self.published = end
        except BaseException as exc:
            self.publish_error = exc

    def _maybe_kill(self, now: float) -> None:
        """Kill the node leading the sink's queue; 3 s later start it again and wait until
        the queue has its three members online; `kill_interval` later, the next kill."""
        if self._down is not None:
            node, killed_at = self._down
            if now - killed_at < 3:
                return
            started = time.monotonic()
            cluster("start-node", str(node))
            while len(queue_row(self.queue).get("online") or []) < 3:
                time.sleep(0.5)
            self.kills[-1]["rejoined_s"] = round(time.monotonic() - started, 1)
            self._down = None
            self._next_kill = time.monotonic() + self.args.kill_interval
            return
        if now < self._next_kill:
            return
        leader = str(queue_row(self.queue)["leader"])
        node = int(leader.split("@", 1)[0].removeprefix("lv"))
        pid = int(cluster("pid", str(node)).strip())
        self.kills.append({"node": node, "at": time.time()})
        self.killed.append(pid)
        os.kill(pid, signal.SIGKILL)
        self._down = (node, time.monotonic())

    def _report(self, elapsed: float, exit_code: int | None) -> dict[str, Any]:
        report = super()._report(elapsed, exit_code)
        times = sorted(self.tally_times())
        for kill in self.kills:
            window = [t for t in times if kill["at"] - 1 <= t <= kill["at"] + 30]
            gaps = [b - a for a, b in itertools.pairwise(window)]
            kill["handling_gap_s"] = round(max(gaps, default=float("nan")), 2)
        report["cluster_kills"] = self.kills
        report["publish_batches_retried"] = self.publish_retries
        return report

    def tally_times(self) -> list[float]:
        """Every handled message's time, from the record files."""
        found = []
        for path in self.record_dir.iterdir():
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2:
                    found.append(float(parts[1]))
        return found

    def close(self) -> None:
        """Start a node still down, then clean up as the soak does."""
        down = self._down
        if down is not None:
            _best_effort(lambda: print(cluster("start-node", str(down[0])), end=""))
        super().close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("warning")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started_here = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode != 0
    if started_here:
        print("starting the cluster (scripts/cluster start)…", flush=True)
        cluster("start")
    try:
        soak = ClusterSoak(args)
        print(
            f"Leveret cluster soak: namespace {soak.namespace}, {args.messages} messages, "
            f"{args.processes} processes x {args.threads} threads, the queue's leader node "
            f"killed {args.kill_interval}s after each restart"
        )
        report = run_to_the_end(soak)
        if report is None:
            return 130
    finally:
        if started_here:
            _best_effort(lambda: print(cluster("stop"), end=""))
    print_summary(report)
    print(f"publish batches retried {report['publish_batches_retried']}")
    for kill in report["cluster_kills"]:
        print(
            f"  node {kill['node']} killed: handling paused {kill['handling_gap_s']} s, "
            f"rejoined with 3 members online after {kill.get('rejoined_s', '?')} s"
        )
    write_report(report, args.output)
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
