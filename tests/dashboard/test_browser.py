"""The dashboard end to end in a real headless Chromium: a worker appears, a failed message is
found, opened and replayed once its handler is fixed; hostile dead letters render as text.

The first test takes the docs' screenshots (``LEVERET_SCREENSHOTS=docs/dashboard``), of the
parcels example (examples/parcels) run from a copy in a folder of its own: `screenshot`
refuses a page that shows a path of this machine."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.sync_api import Page, expect

from leveret.services import RabbitBroker
from tests.dashboard.conftest import (
    SCREENSHOTS_ENV,
    ExampleProject,
    StartDashboard,
    put_dead_letter,
    screenshot,
    wait_serving,
)
from tests.dashboard_actors import Parcels
from tests.support import ROOT, WorkerProcess, wait_until

pytestmark = [pytest.mark.timeout(120)]


Test = TypeVar("Test", bound=Callable[..., None])

DOCS_HOST = "depot-1"
"""The host name the example's worker runs under when the pictures are made (in a UTS
namespace of its own, where one can be made: root with CAP_SYS_ADMIN), so that they show no
name of the machine that took them."""


def _example_worker(namespace: str, project: ExampleProject) -> WorkerProcess:
    wrapper = None
    if os.environ.get(SCREENSHOTS_ENV) and _can_unshare_uts():
        wrapper = ["unshare", "--uts", "sh", "-c", f'hostname {DOCS_HOST} && exec "$@"', "sh"]
    return WorkerProcess(
        ["parcels.actors"],
        namespace,
        args=["--threads", "2", "--heartbeat-interval", "1"],
        env=project.env,
        cwd=project.folder,
        wrapper=wrapper,
    )


def _can_unshare_uts() -> bool:
    """Whether a UTS namespace can be made here: as root with CAP_SYS_ADMIN (a container's
    root usually cannot)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


def _docs_namespace(test: Test) -> Test:
    """Making the docs' pictures (a run by hand): the namespace a user would choose."""
    if os.environ.get(SCREENSHOTS_ENV):
        return pytest.mark.parametrize("namespace", ["parcels"])(test)
    return test


@_docs_namespace
def test_a_failed_message_is_found_opened_and_replayed_in_the_browser(
    rabbit_broker: RabbitBroker,
    start_dashboard: StartDashboard,
    page: Page,
    tmp_path: Path,
    parcels_project: ExampleProject,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The docs' screenshots: the parcels example, run from a copy in a folder of its own."""
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "parcels"))
    example = importlib.import_module("parcels.actors")

    rabbit_broker.declare(example.Parcels)
    worker = _example_worker(rabbit_broker.namespace, parcels_project)
    try:
        worker.wait_consuming()
        served = start_dashboard(
            modules=("parcels.actors",), env=parcels_project.env, cwd=parcels_project.folder
        )
        wait_serving(served)

        # The overview: the worker appears (from its heartbeats).
        page.goto(served.url + "/")
        expect(page.locator("#workers tbody")).to_contain_text(str(worker.pid), timeout=20_000)
        # Its rate, from two snapshots, once the page has refreshed.
        expect(page.locator("#workers thead th").nth(7)).to_have_text("handled/s")
        worker_row = page.locator("#workers tbody tr", has_text=str(worker.pid))
        expect(worker_row.locator("td").nth(7)).to_have_text(re.compile(r"^\d+(\.\d+)?$"))
        # The schedules of the modules given, each with its next tick.
        schedule_row = page.locator("#schedules tbody tr", has_text="parcels.morning-round")
        expect(schedule_row).to_contain_text("06:00:00")
        expect(schedule_row).to_contain_text("none yet")
        parcels_row = page.locator("#queues tbody tr", has_text="parcels")
        expect(parcels_row.locator("td").nth(6)).to_have_text("0")

        # A message fails: the figures change in the open page, without reloading it.
        message_id = rabbit_broker.publish(example.Parcel(number=7, address="Nowhere Lane"))
        wait_until(
            lambda: rabbit_broker.dead_letter_count(example.Parcels) == 1, 20, "a dead letter"
        )
        expect(parcels_row.locator("td").nth(6)).to_have_text("1", timeout=20_000)
        screenshot(page, "overview", tmp_path)

        # The actor's page, then its dead letters: the message is there.
        parcels_row.get_by_role("link", name="parcels").click()
        expect(page.locator("h1")).to_contain_text("parcels")
        expect(page.locator("body")).to_contain_text("parcels.parcel")  # its topic
        # Its figures refresh in place too: a second message fails while the page is open.
        dead = page.locator('#actor-figures [data-field="dead_letters"]')
        expect(dead).to_have_text("1")
        rabbit_broker.publish(example.Parcel(number=8, address="Nowhere Lane"))
        expect(dead).to_have_text("2", timeout=20_000)
        screenshot(page, "actor", tmp_path)
        dead.click()
        row = page.locator("#letters tbody tr", has_text=message_id)
        expect(row).to_contain_text("AddressUnknown")
        screenshot(page, "dead-letters", tmp_path)

        # Opened: the error, its traceback and the body.
        row.get_by_role("link", name=message_id).click()
        expect(page.locator("#error")).to_have_text(
            "AddressUnknown: no street called 'Nowhere Lane'"
        )
        expect(page.locator("#traceback")).to_contain_text("raise AddressUnknown")
        expect(page.locator("#body")).to_contain_text('"address": "Nowhere Lane"')
        screenshot(page, "dead-letter", tmp_path)

        # The street added, the message replayed (after the page's confirmation).
        with (parcels_project.folder / "parcels" / "streets.txt").open("a") as streets:
            streets.write("Nowhere Lane\n")
        questions: list[str] = []

        def accept(dialog) -> None:  # type: ignore[no-untyped-def]
            questions.append(dialog.message)
            dialog.accept()

        page.on("dialog", accept)
        page.get_by_role("button", name="Replay").click()
        expect(page.locator(".done")).to_have_text("replayed 1 dead letter(s)")
        assert questions == ["Replay this message to parcels?"]
        wait_until(
            lambda: [e["number"] for e in worker.events("parcel_delivered")] == [7],
            20,
            "the replayed parcel delivered",
        )
        page.reload()
        expect(page.locator("#letters tbody tr")).to_have_count(1)  # only number 8 is left
        expect(page.locator("#letters tbody")).not_to_contain_text(message_id)
        assert rabbit_broker.dead_letter_count(example.Parcels) == 1
    finally:
        worker.stop_gracefully()


def test_a_cancelled_confirmation_does_nothing(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard, page: Page, tmp_path: Path
) -> None:
    rabbit_broker.declare(Parcels)
    put_dead_letter(rabbit_broker, "kept", b'{"number": 1, "address": "x"}', {})
    served = start_dashboard()
    wait_serving(served)
    page.goto(served.url + "/actors/parcels/dead-letters")
    page.on("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Purge all").click()
    page.wait_for_timeout(500)
    expect(page.locator("#letters tbody")).to_contain_text("kept")
    assert rabbit_broker.dead_letter_count(Parcels) == 1


SCRIPT = "<script>window.__xss = 1</script>"
IMG = '"><img src=x onerror="window.__xss = 2">'


def test_a_hostile_dead_letter_renders_as_text_in_the_browser(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard, page: Page, tmp_path: Path
) -> None:
    rabbit_broker.declare(Parcels)
    message_id = f"id?x=1#y/{IMG}"
    put_dead_letter(
        rabbit_broker,
        message_id,
        f'{{"address": "{SCRIPT}{IMG.replace(chr(34), "")}"}} {IMG}'.encode(),
        {
            "x-leveret-error-type": f"Evil{IMG}",
            "x-leveret-error-message": SCRIPT,
            "x-leveret-error-traceback": f"Traceback {SCRIPT}",
            f"x-{IMG}": f"{IMG}{SCRIPT}",
        },
        topic=SCRIPT,
    )
    served = start_dashboard()
    wait_serving(served)
    page.goto(served.url + "/actors/parcels/dead-letters")
    row = page.locator("#letters tbody tr", has_text="window.__xss = 2")
    expect(row).to_contain_text(IMG)  # the text itself, shown
    expect(row).to_contain_text(SCRIPT)
    row.locator("a").first.click()
    expect(page.locator("#message-id")).to_have_text(message_id)
    expect(page.locator("#error")).to_contain_text(SCRIPT)
    expect(page.locator("#traceback")).to_contain_text(SCRIPT)
    expect(page.locator("#body")).to_contain_text(IMG)
    expect(page.locator("#headers")).to_contain_text(f"x-{IMG}")
    # Nothing ran and nothing became markup: no image, no script but the dashboard's own.
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img").count() == 0
    assert page.locator("script").count() == 1


def test_a_picture_showing_a_path_of_this_machine_is_refused(page: Page, tmp_path: Path) -> None:
    page.set_content(f'<pre>File "{ROOT}/tests/dashboard_actors.py", line 37, in deliver</pre>')
    with pytest.raises(AssertionError, match="shows paths of the machine"):
        screenshot(page, "leak", tmp_path)
    assert not (tmp_path / "leak.png").exists()
