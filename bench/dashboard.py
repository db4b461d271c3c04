"""Dashboard with many actors: ``python -m bench.dashboard [--actors 500] [--requests 10]``.

Declares N actor queues (classic, with their ``.dlq``: the dashboard reads them the same
way whatever their type) in the namespace ``dashbench-<pid>``, starts ``leveret dashboard``
for it, and times the overview page (``GET /``: heartbeats, the management API's figures
and a passive declare of every queue, rendered) and its JSON (``GET /api/overview``) over
HTTP. Everything is deleted at the end. JSON goes to bench/results/dashboard-latest.json.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pika

from bench.common import argument_parser
from leveret.services.topology import naming

RESULTS = Path(__file__).parent / "results" / "dashboard-latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser("python -m bench.dashboard", __doc__)
    parser.add_argument("--actors", type=int, default=500)
    parser.add_argument("--requests", type=int, default=10, help="timed requests per page")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _queues(namespace: str, actors: int) -> list[str]:
    names = []
    for n in range(actors):
        queue = naming.queue_name(namespace, f"actor{n:03d}")
        names += [queue, naming.dlq_name(namespace, f"actor{n:03d}")]
    return names


def _timed(url: str, count: int) -> dict[str, Any]:
    times = []
    size = 0
    for _ in range(count):
        time.sleep(1.1)  # past the dashboard's shared snapshot (1 s): each one is fresh
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            size = len(response.read())
        times.append(time.perf_counter() - started)
    return {
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
        "min_s": round(min(times), 4),
        "bytes": size,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    namespace = f"dashbench-{int(time.time()) % 100000}"
    queues = _queues(namespace, args.actors)
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    port = _free_port()
    dashboard = None
    try:
        declared_at = time.perf_counter()
        for queue in queues:
            channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
        declared_s = time.perf_counter() - declared_at
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "leveret", "dashboard", "--broker-url", args.url,
             "--namespace", namespace, "--port", str(port)],
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                # The first look waits for heartbeats (about 6 s): not what is measured.
                first = urllib.request.urlopen(base + "/", timeout=60).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        shown = len(set(re.findall(r'href="/actors/(actor\d+)"', first)))
        result = {
            "actors": args.actors,
            "queues": len(queues),
            "queues_declared_s": round(declared_s, 2),
            "actors_on_the_page": shown,
            "overview_html": _timed(base + "/", args.requests),
            "overview_json": _timed(base + "/api/overview", args.requests),
            "note": "after the first look (which waits for heartbeats); each request takes a "
            "fresh snapshot (1.1 s apart)",
        }
    finally:
        if dashboard is not None:
            dashboard.terminate()
            dashboard.wait(10)
        for queue in queues:
            channel.queue_delete(queue)
        connection.close()
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if shown == args.actors else 1


if __name__ == "__main__":
    sys.exit(main())
