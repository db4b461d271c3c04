"""The broker down while the dashboard runs: every page and the JSON API answer within a few
seconds with what is known and a banner (the URL tried, password hidden, and the error);
actions fail with a message; the page recovers by itself when the broker is back.

The broker is made unreachable without touching the local RabbitMQ: a port nobody listens
on (refused at once), or a `TcpProxy` in front of it that stops forwarding (packets
dropped: connections open and stay silent) or closes every connection."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from leveret.services import RabbitBroker
from tests.dashboard.conftest import Served, StartDashboard, put_dead_letter, wait_serving
from tests.dashboard_actors import Parcels
from tests.proxy import TcpProxy
from tests.support import RABBIT_ADDRESS, RABBIT_URL, WorkerProcess, free_port, wait_until

pytestmark = [pytest.mark.timeout(120)]

A_FEW_SECONDS = 6.0
"""The longest a page may take with the broker unreachable (connect deadline 5 s)."""
SECRET = "s3cret-pw"
LETTERS = "/actors/parcels/dead-letters"


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy(RABBIT_ADDRESS) as running:
        yield running


def _timed(
    opener: urllib.request.OpenerDirector, url: str, data: bytes | None = None
) -> tuple[int, str, float]:
    """Status, body and seconds taken."""
    started = time.monotonic()
    try:
        with opener.open(url, data=data, timeout=60) as response:
            status, body = int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    return status, body, time.monotonic() - started


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def _browser_like(jar: CookieJar | None = None) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(jar if jar is not None else CookieJar()),
        _NoRedirect(),
    )


def _banner(page: str) -> str:
    found = re.search(r'<div id="broker-down"[^>]*>(.*?)</div>', page, re.S)
    assert found is not None, page[:2000]
    return found.group(1)


def _start(start_dashboard: StartDashboard, url: str, *args: str) -> Served:
    served = start_dashboard("--broker-url", url, *args)
    wait_serving(served)
    return served


def test_with_the_broker_port_refused_every_page_answers_at_once_with_a_banner(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard
) -> None:
    """Nothing known (no snapshot yet, no management API): a banner and empty tables; the
    dead-letter pages and the actions answer 503 with what to do, never 500."""
    rabbit_broker.declare(Parcels)
    dead = f"amqp://guest:{SECRET}@127.0.0.1:{free_port()}/"
    served = _start(start_dashboard, dead, "--management-url", "")
    jar = CookieJar()
    opener = _browser_like(jar)
    figures = {}
    for path in ("/", "/api/overview", "/actors/parcels", LETTERS, LETTERS + "/letter-1"):
        status, body, took = _timed(opener, served.url + path)
        figures[path] = (status, round(took, 2))
        assert took < A_FEW_SECONDS, (path, took)
        assert SECRET not in body
        if path == "/api/overview":
            data = json.loads(body)
            assert status == 200
            assert data["unreachable"]["url"] == dead.replace(SECRET, "***")
            assert data["unreachable"]["error"].startswith(
                f"BrokerConnectionError: cannot connect to {dead.replace(SECRET, '***')}"
            )
            assert data["taken_at"] is None
            assert data["workers"] == []
            assert data["queues"] == []
        else:
            assert status == (200 if path == "/" else 503), path
            banner = _banner(body)
            assert dead.replace(SECRET, "***") in banner
            assert "cannot be reached" in banner
    print("broker port refused:", figures)
    # The actions (with the CSRF value the pages set): a clear page, nothing done, no 500.
    token = next(cookie.value for cookie in jar if cookie.name == "leveret_csrf")
    for action in ("replay", "purge"):
        form = urllib.parse.urlencode({"csrf": token, "all": "1"}).encode()
        status, page, took = _timed(opener, f"{served.url}{LETTERS}/{action}", form)
        assert status == 503, action
        assert took < A_FEW_SECONDS
        assert "cannot be reached" in page
        assert SECRET not in page
    assert rabbit_broker.dead_letter_count(Parcels) == 0


def test_with_packets_dropped_pages_answer_within_seconds_with_the_last_snapshot(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard, proxy: TcpProxy
) -> None:
    """The proxy stops forwarding (connections open, silent): the overview and the API answer
    within a few seconds, several at once, with the last snapshot and when it was taken;
    they recover by themselves once the proxy forwards again."""
    rabbit_broker.declare(Parcels)
    put_dead_letter(rabbit_broker, "letter-1", b"{}", {})
    url = proxy.url(RABBIT_URL)
    served = _start(start_dashboard, url, "--management-url", "")
    opener = _browser_like()
    status, body, _ = _timed(opener, served.url + "/api/overview")
    before = json.loads(body)
    assert status == 200
    assert before["unreachable"] is None
    assert [q["dead_letters"] for q in before["queues"]] == [1]

    proxy.blackhole()
    results: list[tuple[str, int, float]] = []

    def one(path: str) -> None:
        status, _body, took = _timed(_browser_like(), served.url + path)
        results.append((path, status, round(took, 2)))

    time.sleep(1.1)  # past the second in which requests share a snapshot
    threads = [
        threading.Thread(target=one, args=(path,))
        for path in ("/", "/api/overview", "/api/overview", "/actors/parcels", LETTERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("packets dropped, five requests at once:", sorted(results))
    assert all(took < A_FEW_SECONDS for _path, _status, took in results), results
    assert sorted(status for path, status, _ in results if path != LETTERS) == [200] * 4
    assert [status for path, status, _ in results if path == LETTERS] == [503]

    status, body, took = _timed(opener, served.url + "/api/overview")
    data = json.loads(body)
    assert took < A_FEW_SECONDS
    assert data["unreachable"] is not None
    assert data["unreachable"]["url"] == url.replace("guest:guest", "guest:***")
    assert data["taken_at"] == before["taken_at"]  # the last snapshot, and when it was taken
    assert [q["dead_letters"] for q in data["queues"]] == [1]
    status, page, took = _timed(opener, served.url + "/")
    assert took < A_FEW_SECONDS
    assert "cannot be reached" in _banner(page) or "has not answered" in _banner(page)
    assert before["taken_at"] in _banner(page)

    proxy.restore()

    def recovered() -> bool:
        data = json.loads(_timed(opener, served.url + "/api/overview")[1])
        return data["unreachable"] is None and data["taken_at"] != before["taken_at"]

    wait_until(recovered, 30, "the dashboard to read the broker again")
    status, page, _ = _timed(opener, served.url + LETTERS)
    assert status == 200
    assert "letter-1" in page


def test_with_amqp_cut_the_management_apis_figures_are_shown(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard, proxy: TcpProxy
) -> None:
    """AMQP unreachable (every connection closed) while the management API answers: the
    queues' figures come from the API, live, with the banner."""
    rabbit_broker.declare(Parcels)
    served = _start(start_dashboard, proxy.url(RABBIT_URL))
    opener = _browser_like()
    assert json.loads(_timed(opener, served.url + "/api/overview")[1])["unreachable"] is None
    proxy.cut()
    put_dead_letter(rabbit_broker, "letter-2", b"{}", {})  # straight to the broker

    def shows_the_new_letter() -> bool:
        status, body, took = _timed(opener, served.url + "/api/overview")
        assert status == 200
        assert took < A_FEW_SECONDS
        data = json.loads(body)
        return (
            data["unreachable"] is not None
            and data["source"] == "management"
            and [q["dead_letters"] for q in data["queues"]] == [1]
        )

    # The API's figures lag the broker by its collection interval: the letter shows within
    # about 5 s on RabbitMQ 3.10, 6 to 9 s on 4.3 (a quorum queue's counts come later).
    wait_until(shows_the_new_letter, 30, "the management API's figures (10 s old at most)")
    page = _timed(opener, served.url + "/")[1]
    assert "management API" in _banner(page)


def test_the_open_overview_shows_the_banner_and_recovers_by_itself(
    rabbit_broker: RabbitBroker,
    start_dashboard: StartDashboard,
    proxy: TcpProxy,
    page: Page,
    tmp_path: Path,
) -> None:
    """In Chromium: the live refresh shows the banner while the broker is unreachable and
    takes it away, with fresh figures, when it is back."""
    rabbit_broker.declare(Parcels)
    worker = WorkerProcess(
        ["tests.dashboard_actors"],
        rabbit_broker.namespace,
        args=["--heartbeat-interval", "1"],
        env={
            "LEVERET_TEST_BROKEN": str(tmp_path / "broken"),
            "LEVERET_TEST_DELIVERED": str(tmp_path / "delivered"),
        },
    )
    try:
        worker.wait_consuming()
        served = _start(start_dashboard, proxy.url(RABBIT_URL), "--management-url", "")
        page.goto(served.url + "/")
        expect(page.locator("#workers tbody")).to_contain_text(str(worker.pid), timeout=20_000)
        banner = page.locator("#broker-down")
        expect(banner).to_be_hidden()
        proxy.blackhole()
        expect(banner).to_be_visible(timeout=15_000)
        expect(banner).to_contain_text("127.0.0.1")
        expect(page.locator("#workers tbody")).to_contain_text(str(worker.pid))  # last known
        proxy.restore()
        expect(banner).to_be_hidden(timeout=30_000)
        put_dead_letter(rabbit_broker, "letter-3", b"{}", {})
        parcels_row = page.locator("#queues tbody tr", has_text="parcels")
        expect(parcels_row.locator("td").nth(6)).to_have_text("1", timeout=20_000)
    finally:
        worker.stop_gracefully()
