"""Health checks of a worker (`--health-port`, `--health-file`) and `leveret ping`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from leveret.actors import actors_in
from leveret.services import MemoryBroker, RabbitBroker
from leveret.services.operations.health import HealthServer, WorkerProbe
from tests.sample_actors import Job, Jobs
from tests.support import (
    WorkerProcess,
    free_port,
    get_health,
    leveret_cli,
    running,
    wait_health,
    wait_until,
)

leveret = leveret_cli


def test_health_server_follows_the_workers_consuming_state(memory_broker: MemoryBroker) -> None:
    """200 with queues and counts while the worker consumes; 503 once it shuts down."""
    with running(memory_broker, Jobs, threads=1, shutdown_timeout_s=5) as worker:
        probe = WorkerProbe(worker, [f"{memory_broker.namespace}.jobs"])
        server = HealthServer(probe, port=0, host="127.0.0.1")
        server.start()
        try:
            Jobs.send(Job(n=1))
            body = wait_health(server.port, 200)
            assert body["status"] == "ok"
            assert body["pid"] == os.getpid()
            assert body["queues"] == [f"{memory_broker.namespace}.jobs"]
            wait_until(lambda: get_health(server.port)[1]["handled"] == 1, 10, "handled == 1")
            worker.shutdown(5)
            code, body = get_health(server.port)
            assert (code, body["status"]) == (503, "unavailable")
        finally:
            server.close()


def test_worker_health_port_answers_200_while_consuming(
    rabbit_broker: RabbitBroker, namespace: str
) -> None:
    """`leveret worker --health-port` serves 200 + JSON (pid, queues, counts), 503 after SIGTERM."""
    rabbit_broker.declare(*actors_in(["tests.sample_actors"]))
    port = free_port()
    worker = WorkerProcess(["tests.sample_actors"], namespace, args=["--health-port", str(port)])
    try:
        body = wait_health(port, 200)
        assert body["pid"] == worker.pid
        assert f"{namespace}.jobs" in body["queues"]
        rabbit_broker.send(Jobs, Job(n=1))
        wait_until(lambda: get_health(port)[1].get("handled") == 1, 20, "the job to be counted")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert get_health(port) == (0, {})  # the port is closed with the process
    finally:
        worker.stop()


def test_worker_without_health_options_serves_nothing(
    rabbit_broker: RabbitBroker, namespace: str
) -> None:
    """The worker runs unchanged without --health-port: no port is opened, none required."""
    rabbit_broker.declare(*actors_in(["tests.sample_actors"]))
    worker = WorkerProcess(["tests.sample_actors"], namespace)
    try:
        worker.wait_consuming()
        assert "health_listening" not in worker.log()
    finally:
        worker.stop()


def test_health_port_in_use_fails_at_start_with_a_clear_error(
    rabbit_broker: RabbitBroker, namespace: str
) -> None:
    """A health port already bound stops the worker at start (exit 1), saying why."""
    import socket

    rabbit_broker.declare(*actors_in(["tests.sample_actors"]))
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        worker = WorkerProcess(
            ["tests.sample_actors"], namespace, args=["--health-port", str(port)]
        )
        try:
            assert worker.wait(30) == 1
            assert "cannot serve health checks" in worker.log()
        finally:
            worker.stop()


def test_health_file_exists_while_consuming_and_is_removed_on_shutdown(
    rabbit_broker: RabbitBroker, namespace: str, tmp_path: Path
) -> None:
    """`--health-file` is kept while consuming (`ping --health-file` exits 0), removed at exit."""
    rabbit_broker.declare(*actors_in(["tests.sample_actors"]))
    path = tmp_path / "healthy.json"
    worker = WorkerProcess(["tests.sample_actors"], namespace, args=["--health-file", str(path)])
    try:
        wait_until(path.exists, 20, "the health file to appear")
        assert leveret("ping", "--health-file", str(path)).returncode == 0
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert not path.exists()
        result = leveret("ping", "--health-file", str(path))
        assert result.returncode == 1
        assert "does not exist" in result.stderr
    finally:
        worker.stop()


def test_ping_exits_0_against_the_real_broker(rabbit_url: str) -> None:
    """`leveret ping` does the AMQP handshake with the broker and exits 0."""
    result = leveret("ping", "--broker-url", rabbit_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_ping_exits_1_with_one_clear_line_and_no_password_on_a_closed_port() -> None:
    """Against a closed port: exit 1, one line saying why, the password never shown."""
    url = f"amqp://someone:Sup3rSecret@127.0.0.1:{free_port()}/"
    result = leveret("ping", "--timeout", "3", env={"LEVERET_BROKER_URL": url})
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: cannot connect to amqp://someone:***@127.0.0.1:")
    assert "refused" in lines[0].lower()
    assert "Sup3rSecret" not in result.stderr


def test_ping_with_wrong_password_exits_1_without_showing_it(rabbit_url: str) -> None:
    """A refused login is a failure too (the handshake includes it); the password stays hidden."""
    url = rabbit_url.replace("guest:guest@", "guest:WrongPassw0rd@")
    result = leveret("ping", "--broker-url", url, "--timeout", "5")
    assert result.returncode == 1
    assert "ACCESS_REFUSED" in result.stderr
    assert "WrongPassw0rd" not in result.stderr


def test_ping_health_url_reports_the_workers_health(memory_broker: MemoryBroker) -> None:
    """`ping --health-url` exits 0 on 200, 1 on 503 or when nothing listens."""
    memory_broker.declare(Jobs)
    worker = memory_broker.worker([Jobs], threads=1)
    server = HealthServer(WorkerProbe(worker, ["q"]), port=0, host="127.0.0.1")
    server.start()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        unhealthy = leveret("ping", "--health-url", url)  # not started yet
        assert unhealthy.returncode == 1
        assert "HTTP 503" in unhealthy.stderr
        worker.start()
        assert leveret("ping", "--health-url", url).returncode == 0
    finally:
        worker.shutdown(5)
        server.close()
    gone = leveret("ping", "--health-url", url, "--timeout", "2")
    assert gone.returncode == 1
    assert "cannot reach" in gone.stderr


def test_children_probe_is_healthy_only_while_every_childs_health_file_is(
    tmp_path: Path,
) -> None:
    """A supervisor's probe: healthy while all child files exist and are fresh; counts summed."""
    import threading

    from leveret.services.operations.health import ChildrenProbe, Health, HealthFile

    class Fixed:
        def __init__(self, health: Health) -> None:
            self.health = health

        def check(self) -> Health:
            return self.health

    paths = [tmp_path / "child-0.json", tmp_path / "child-1.json"]
    for number, path in enumerate(paths):
        details = {"handled": number + 1, "retried": 0, "dead_lettered": 0}
        HealthFile(Fixed(Health(True, details)), path).update()
    stopping = threading.Event()
    probe = ChildrenProbe(lambda: paths, max_age_s=30, stopping=stopping)
    health = probe.check()
    assert health.healthy
    assert health.details["handled"] == 3
    os.utime(paths[1], (0, 0))  # a hung child stops rewriting its file
    assert not probe.check().healthy
    paths[1].unlink()
    assert not probe.check().healthy
    assert not ChildrenProbe(list, max_age_s=30).check().healthy  # no child at all
    HealthFile(Fixed(Health(True)), paths[1]).update()
    stopping.set()
    assert not probe.check().healthy


def test_health_server_listens_on_loopback_and_bounds_its_connections(
    memory_broker: MemoryBroker,
) -> None:
    """By default 127.0.0.1 only. A hundred idle clients cost the worker no thread, a probe
    is answered meanwhile, and a silent client is disconnected after the request timeout."""
    import socket
    import threading

    from leveret.services.operations.health import REQUEST_TIMEOUT_S

    memory_broker.declare(Jobs)
    worker = memory_broker.worker([Jobs], threads=1)
    worker.start()
    server = HealthServer(WorkerProbe(worker, ["q"]), port=0)
    assert server.host == "127.0.0.1"
    server.start()
    idle: list[socket.socket] = []
    try:
        threads_before = threading.active_count()
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        assert get_health(server.port)[0] == 200  # at once, with a hundred clients idle
        assert threading.active_count() <= threads_before
        idle[-1].settimeout(REQUEST_TIMEOUT_S + 5)
        assert idle[-1].recv(1) == b""  # the server hung up on a silent client
    finally:
        for sock in idle:
            sock.close()
        worker.shutdown(5)
        server.close()


def test_slowloris_clients_never_keep_a_probe_from_its_answer(memory_broker: MemoryBroker) -> None:
    """Two hundred clients each dribble a request one byte at a time, forever (opening new
    connections as theirs are cut): every probe meanwhile is answered 200 within a second."""
    import socket
    import threading
    import time

    memory_broker.declare(Jobs)
    worker = memory_broker.worker([Jobs], threads=1)
    worker.start()
    server = HealthServer(WorkerProbe(worker, ["q"]), port=0, host="127.0.0.1")
    server.start()
    stop = threading.Event()

    def dribble() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                    for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 10_000:
                        if stop.wait(0.2):
                            return
                        sock.sendall(bytes([byte]))
            except OSError:
                continue  # cut by the server: come back at once, as an attacker would

    attackers = [threading.Thread(target=dribble, daemon=True) for _ in range(200)]
    try:
        for thread in attackers:
            thread.start()
        time.sleep(1)  # let them all connect and start dribbling
        answers = []
        for _ in range(10):
            started = time.monotonic()
            status, _body = get_health(server.port, timeout_s=5)
            answers.append((status, round(time.monotonic() - started, 3)))
            time.sleep(0.3)
        assert all(status == 200 for status, _took in answers), answers
        assert max(took for _status, took in answers) < 1.0, answers
    finally:
        stop.set()
        for thread in attackers:
            thread.join(5)
        worker.shutdown(5)
        server.close()


def test_a_large_metrics_answer_arrives_whole(memory_broker: MemoryBroker) -> None:
    """A /metrics body of 1 MiB (a multiprocess exposition with many series) reaches a
    scraper that reads slowly whole, as its Content-Length says."""
    import socket
    import time

    memory_broker.declare(Jobs)
    worker = memory_broker.worker([Jobs], threads=1)
    worker.start()
    body = b"".join(b'leveret_series{n="%d"} 1\n' % n for n in range(50_000))
    assert len(body) > 1024 * 1024
    server = HealthServer(WorkerProbe(worker, ["q"]), port=0, metrics=lambda: body)
    server.start()
    try:
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.settimeout(10)
            client.connect(("127.0.0.1", server.port))
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while chunk := client.recv(16384):
                received += chunk
                time.sleep(0.001)  # a slow scraper: the socket cannot take it all at once
        head, _, got = received.partition(b"\r\n\r\n")
        assert f"Content-Length: {len(body)}".encode() in head
        assert got == body, (len(got), len(body))
    finally:
        worker.shutdown(5)
        server.close()
