"""DNS rebinding and another site's page, in a real headless Chromium: the attacker's name
is mapped to 127.0.0.1 by Chromium's own resolver (``--host-resolver-rules``), and the
attacker's page is served to the browser by Playwright, as the attacker's server would."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from leveret.services import RabbitBroker
from tests.dashboard.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    StartDashboard,
    give_back_once,
    put_dead_letter,
    redelivered,
    wait_serving,
)
from tests.dashboard_actors import Parcels

pytestmark = [pytest.mark.timeout(90)]

ATTACKER = "rebind.attacker.example"


# Recent Chromium blocks a public page's requests to loopback by itself (Local Network
# Access); Firefox, Safari and older Chromium do not. Turned off: the test is about what
# the dashboard does.
WITHOUT_LOCAL_NETWORK_ACCESS = (
    "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
    "PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium whose resolver sends the attacker's name to this machine (after rebinding)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                *CHROMIUM_ARGS,
                f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1",
                WITHOUT_LOCAL_NETWORK_ACCESS,
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _serve_attackers_page(page: Page, url: str, html: str) -> None:
    def fulfill(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body=html)

    page.route(url, fulfill)


def test_a_rebound_page_reads_no_dead_letters_and_purges_nothing(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard, page: Page
) -> None:
    rabbit_broker.declare(Parcels)
    put_dead_letter(rabbit_broker, "secret-letter", b'{"card": "4111"}', {})
    served = start_dashboard()
    wait_serving(served)
    port = urlsplit(served.url).port
    origin = f"http://{ATTACKER}:{port}"
    # The attacker's page: once its name points at 127.0.0.1, its "own" origin is the
    # dashboard's port, and it may read what it fetches there.
    _serve_attackers_page(
        page,
        f"{origin}/evil",
        """<script>
        window.result = (async () => {
          const letters = await fetch("/actors/parcels/dead-letters");
          const text = await letters.text();
          const token = (text.match(/name="csrf" value="([^"]+)"/) || [])[1] || "";
          const purge = await fetch("/actors/parcels/dead-letters/purge", {
            method: "POST", body: "csrf=" + token,
            headers: {"Content-Type": "application/x-www-form-urlencoded"}});
          return [letters.status, text.includes("secret-letter"), purge.status];
        })();
        </script>""",
    )
    page.goto(f"{origin}/evil")
    status, read, purged = page.evaluate("window.result")
    assert (status, read, purged) == (400, False, 400)
    assert rabbit_broker.dead_letter_count(Parcels) == 1
    # Opened by that name directly, the dashboard says what to do.
    response = page.goto(f"{origin}/")
    assert response is not None
    assert response.status == 400
    expect(page.locator("body")).to_contain_text("--allowed-hosts")


def test_another_sites_page_cannot_make_the_dashboard_read_its_dead_letters(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard, page: Page
) -> None:
    """An image and a form of another site are refused before any pass; a link followed
    from it asks first, and the dashboard's own link then shows the letters."""
    rabbit_broker.declare(Parcels)
    put_dead_letter(rabbit_broker, "kept-letter", b"{}", {})
    served = start_dashboard()
    wait_serving(served)
    letters = f"{served.url}/actors/parcels/dead-letters"
    give_back_once(rabbit_broker)
    asked: list[str] = []
    page.on("requestfinished", lambda r: asked.append(urlsplit(r.url).path))
    page.on("requestfailed", lambda r: asked.append(urlsplit(r.url).path))  # 403: ORB
    # "localhost" is another site than "127.0.0.1" (and needs no resolver rule).
    _serve_attackers_page(
        page,
        "http://localhost:1/chat",
        f"""<img src="{letters}"><img src="{letters}/kept-letter">
        <a id="link" href="{letters}">dead letters</a>""",
    )
    page.goto("http://localhost:1/chat")
    page.wait_for_load_state("networkidle")
    assert {"/actors/parcels/dead-letters", "/actors/parcels/dead-letters/kept-letter"} <= set(
        asked
    )
    assert redelivered(rabbit_broker) == {"kept-letter": True}  # no pass ran

    page.click("#link")
    expect(page.locator("#cross-site")).to_contain_text("from another site")
    assert redelivered(rabbit_broker) == {"kept-letter": True}
    page.click("#continue")
    expect(page.locator("#letters tbody")).to_contain_text("kept-letter")
    assert redelivered(rabbit_broker) == {"kept-letter": False}  # now it did

    # A form of another site, submitted by its script: refused.
    _serve_attackers_page(
        page,
        "http://localhost:1/form",
        f"""<form id="f" method="post" action="{letters}/purge">
        <input name="csrf" value="x"></form><script>document.getElementById("f").submit()
        </script>""",
    )
    page.goto("http://localhost:1/form")
    expect(page.locator("body")).to_contain_text("is refused")
    assert rabbit_broker.dead_letter_count(Parcels) == 1
