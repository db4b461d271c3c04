"""Fixtures of the dashboard tests: `leveret dashboard` in a subprocess, and a real headless
Chromium (Debian's, driven by Playwright through its path)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
import pytest

import leveret
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.dashboard_actors import Parcels
from tests.support import RABBIT_URL, ROOT, LoggedProcess, free_port, wait_until

# Playwright is imported by the browser tests only: the HTTP ones (test_pages, test_security,
# test_origins, test_rebinding) run where only the dashboard extra is installed (noxfile.py).
if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("LEVERET_CHROMIUM", "/usr/bin/chromium")
# As this machine's probe starts it: no sandbox as root, and nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS_ENV = "LEVERET_SCREENSHOTS"
"""A folder to write the pages' screenshots to (docs/dashboard when making the docs)."""


@dataclass
class Served:
    """A running `leveret dashboard`."""

    url: str
    process: LoggedProcess


StartDashboard = Callable[..., Served]
"""`start_dashboard(*args, env=..., host=...)`: start one."""


@pytest.fixture
def start_dashboard(rabbit_broker: RabbitBroker, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start `leveret dashboard` for the test's namespace (killed by pid at teardown)."""
    started: list[Served] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        modules: tuple[str, ...] = ("tests.dashboard_actors",),
        cwd: Path = ROOT,
    ) -> Served:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "leveret",
            "dashboard",
            *modules,
            "--broker-url",
            RABBIT_URL,
            "--namespace",
            rabbit_broker.namespace,
            "--host",
            host,
            "--port",
            str(port),
            "--refresh",
            "1",
            *args,
        ]
        process = LoggedProcess(command, tmp_path / f"dashboard-{port}.log", env, cwd)
        served = Served(f"http://127.0.0.1:{port}", process)
        started.append(served)
        return served

    yield start
    for served in started:
        served.process.stop_gracefully(10)


def wait_serving(served: Served, headers: dict[str, str] | None = None) -> None:
    """Wait until the dashboard answers (any HTTP status); fail if it exits first."""

    def answers() -> bool:
        if served.process.process.poll() is not None:
            raise AssertionError(f"the dashboard exited:\n{served.process.log()}")
        try:
            request = urllib.request.Request(served.url + "/static/dashboard.css")
            for name, value in (headers or {}).items():
                request.add_header(name, value)
            urllib.request.urlopen(request, timeout=2).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    wait_until(answers, 20, "the dashboard to answer")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module. Not for the session: while Playwright's sync API is
    started, an asyncio loop counts as running in the main thread, and later tests that
    call ``asyncio.run`` would fail."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/ensure-chromium (scripts/test does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()


@dataclass
class ExampleProject:
    """The parcels example (examples/parcels) copied where a user's project could be, with
    Leveret copied into a virtualenv-like folder beside it: what the worker and the
    dashboard run, so that tracebacks on the pages name these copies and no path of this
    machine (the checkout, its .venv, pytest's temporary folders)."""

    folder: Path
    env: dict[str, str]


@pytest.fixture
def parcels_project() -> Iterator[ExampleProject]:
    """The parcels example in a folder of its own (``/tmp/parcels-…``), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="parcels-"))
    try:
        shutil.copytree(
            ROOT / "examples" / "parcels", folder, dirs_exist_ok=True, ignore=_NOT_COPIED
        )
        python = f"python{sys.version_info.major}.{sys.version_info.minor}"
        site_packages = folder / ".venv" / "lib" / python / "site-packages"
        # The installed package (the editable install's tree of links, followed).
        shutil.copytree(
            Path(leveret.__file__).parent, site_packages / "leveret", ignore=_NOT_COPIED
        )
        yield ExampleProject(folder, {"PYTHONPATH": f"{folder}{os.pathsep}{site_packages}"})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.pyc")


def build_machine_paths() -> set[str]:
    """Paths of the machine that runs the tests, which no docs picture may show."""
    paths = {
        str(ROOT),
        sys.prefix,
        str(Path(leveret.__file__).parents[1]),
        tempfile.gettempdir() + "/pytest-of-",
    }
    if str(Path.home()) != "/":
        paths.add(str(Path.home()) + "/")
    return paths


def screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """A PNG of the whole page: into $LEVERET_SCREENSHOTS (the docs' pictures) if set.

    Refused (the test fails) when the page shows a path of this machine.
    """
    text = page.inner_text("body")
    shown = sorted(path for path in build_machine_paths() if path in text)
    assert not shown, f"the {name} page shows paths of the machine: {shown}"
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    time.sleep(0.1)  # let the last layout settle
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


def put_dead_letter(
    broker: RabbitBroker,
    message_id: str,
    body: bytes,
    headers: dict[str, Any],
    topic: str = "tests.dashboard.parcel",
) -> None:
    """Put a dead letter straight into the parcels' `.dlq`, as any AMQP client could."""
    connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            "",
            naming.dlq_name(broker.namespace, Parcels.queue),
            body,
            pika.BasicProperties(message_id=message_id, type=topic, headers=headers),
        )
    finally:
        connection.close()


def give_back_once(broker: RabbitBroker) -> None:
    """Take every dead letter of the parcels' `.dlq` and give it back unacknowledged: each is
    then marked redelivered, until a dead-letter pass (which publishes every letter it visits
    again, fresh) runs. With `redelivered`, a test sees whether a pass ran."""
    _take_and_give_back(broker)


def redelivered(broker: RabbitBroker) -> dict[str, bool]:
    """Each dead letter of the parcels' `.dlq` (by message id): whether it is still marked
    redelivered (no pass ran since `give_back_once`). Marks them all again."""
    return _take_and_give_back(broker)


def _take_and_give_back(broker: RabbitBroker) -> dict[str, bool]:
    connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    try:
        channel = connection.channel()
        found: dict[str, bool] = {}
        last_tag = 0
        while True:
            method, props, _body = channel.basic_get(
                naming.dlq_name(broker.namespace, Parcels.queue), auto_ack=False
            )
            if method is None or props is None:
                break
            found[props.message_id or ""] = bool(method.redelivered)
            last_tag = method.delivery_tag or last_tag
        if last_tag:
            channel.basic_nack(last_tag, multiple=True, requeue=True)
        return found
    finally:
        connection.close()
