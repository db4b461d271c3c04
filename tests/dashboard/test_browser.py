"""The dashboard end to end in a real headless Chromium: a worker appears, a failed message is
found, opened and replayed once its handler is fixed; hostile dead letters render as text.

The same tests take the docs' screenshots: ``LEVERET_SCREENSHOTS=docs/dashboard``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from leveret.services import RabbitBroker
from tests.dashboard.conftest import StartDashboard, put_dead_letter, screenshot, wait_serving
from tests.dashboard_actors import Parcel, Parcels
from tests.support import WorkerProcess, wait_until

pytestmark = [pytest.mark.timeout(120)]


def _worker(namespace: str, tmp_path: Path) -> WorkerProcess:
    return WorkerProcess(
        ["tests.dashboard_actors"],
        namespace,
        args=["--threads", "2", "--heartbeat-interval", "1"],
        env={
            "LEVERET_TEST_BROKEN": str(tmp_path / "broken"),
            "LEVERET_TEST_DELIVERED": str(tmp_path / "delivered"),
        },
    )


def _delivered(tmp_path: Path) -> list[str]:
    path = tmp_path / "delivered"
    return path.read_text().split() if path.exists() else []


def test_a_failed_message_is_found_opened_and_replayed_in_the_browser(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard, page: Page, tmp_path: Path
) -> None:
    rabbit_broker.declare(Parcels)
    (tmp_path / "broken").write_text("the handler fails while this file exists")
    worker = _worker(rabbit_broker.namespace, tmp_path)
    try:
        worker.wait_consuming()
        served = start_dashboard()
        wait_serving(served)

        # The overview: the worker appears (from its heartbeats).
        page.goto(served.url + "/")
        expect(page.locator("#workers tbody")).to_contain_text(str(worker.pid), timeout=20_000)
        # Its rate, from two snapshots, once the page has refreshed.
        expect(page.locator("#workers thead th").nth(7)).to_have_text("handled/s")
        worker_row = page.locator("#workers tbody tr", has_text=str(worker.pid))
        expect(worker_row.locator("td").nth(7)).to_have_text(re.compile(r"^\d+(\.\d+)?$"))
        # The schedules of the modules given, each with its next tick.
        schedule_row = page.locator("#schedules tbody tr", has_text="parcels.depot-round")
        expect(schedule_row).to_contain_text("06:00:00")
        expect(schedule_row).to_contain_text("none yet")
        parcels_row = page.locator("#queues tbody tr", has_text="parcels")
        expect(parcels_row.locator("td").nth(6)).to_have_text("0")

        # A message fails: the figures change in the open page, without reloading it.
        message_id = rabbit_broker.publish(Parcel(number=7, address="Nowhere Lane"))
        wait_until(lambda: rabbit_broker.dead_letter_count(Parcels) == 1, 20, "a dead letter")
        expect(parcels_row.locator("td").nth(6)).to_have_text("1", timeout=20_000)
        screenshot(page, "overview", tmp_path)

        # The actor's page, then its dead letters: the message is there.
        parcels_row.get_by_role("link", name="parcels").click()
        expect(page.locator("h1")).to_contain_text("parcels")
        expect(page.locator("body")).to_contain_text("tests.dashboard.parcel")  # its topic
        # Its figures refresh in place too: a second message fails while the page is open.
        dead = page.locator('#actor-figures [data-field="dead_letters"]')
        expect(dead).to_have_text("1")
        rabbit_broker.publish(Parcel(number=8, address="Nowhere Lane"))
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

        # The handler fixed, the message replayed (after the page's confirmation).
        (tmp_path / "broken").unlink()
        questions: list[str] = []

        def accept(dialog) -> None:  # type: ignore[no-untyped-def]
            questions.append(dialog.message)
            dialog.accept()

        page.on("dialog", accept)
        page.get_by_role("button", name="Replay").click()
        expect(page.locator(".done")).to_have_text("replayed 1 dead letter(s)")
        assert questions == ["Replay this message to parcels?"]
        wait_until(lambda: _delivered(tmp_path) == ["7"], 20, "the replayed message handled")
        page.reload()
        expect(page.locator("#letters tbody tr")).to_have_count(1)  # only number 8 is left
        expect(page.locator("#letters tbody")).not_to_contain_text(message_id)
        assert rabbit_broker.dead_letter_count(Parcels) == 1
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
