"""The dashboard's guards over HTTP: credentials, CSRF, read-only, and a public bind refused
without credentials."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from http.cookiejar import CookieJar

import pytest

from leveret.services import RabbitBroker
from tests.dashboard.conftest import StartDashboard, put_dead_letter, wait_serving
from tests.dashboard_actors import Parcels

pytestmark = [pytest.mark.timeout(60)]

TOKEN = "s3cret-token-for-the-tests-0123"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_with_a_token_every_request_needs_it(start_dashboard: StartDashboard) -> None:
    served = start_dashboard(env={"LEVERET_DASHBOARD_TOKEN": TOKEN})
    wait_serving(served)
    for path in ("/", "/api/overview", "/actors/parcels/dead-letters", "/static/dashboard.js"):
        status, headers, _ = _get(served.url + path)
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Basic")
    assert _get(served.url + "/", {"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
    assert _get(served.url + "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert _get(served.url + "/", {"Authorization": f"Basic {basic}"})[0] == 200
    assert _get(served.url + "/", {"Authorization": "Basic !!!"})[0] == 401


def test_a_public_bind_without_credentials_refuses_to_start(
    start_dashboard: StartDashboard,
) -> None:
    served = start_dashboard(host="0.0.0.0")
    assert served.process.wait(20) == 2
    assert "LEVERET_DASHBOARD_TOKEN" in served.process.log()


def test_a_short_token_is_refused(start_dashboard: StartDashboard) -> None:
    served = start_dashboard(env={"LEVERET_DASHBOARD_TOKEN": "short"})
    assert served.process.wait(20) == 2
    assert "at least 16 characters" in served.process.log()


class _Session:
    """A client that keeps cookies, like a browser."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(CookieJar()), _NoRedirect()
        )

    def get(self, path: str) -> tuple[int, str]:
        with self.opener.open(self.base + path, timeout=10) as response:
            return response.status, response.read().decode()

    def post(self, path: str, body: str, headers: dict[str, str] | None = None) -> int:
        request = urllib.request.Request(
            self.base + path,
            data=body.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            method="POST",
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def _csrf(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


def test_an_action_needs_the_csrf_field_of_the_page_and_the_same_origin(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard
) -> None:
    rabbit_broker.declare(Parcels)
    served = start_dashboard()
    wait_serving(served)
    purge = "/actors/parcels/dead-letters/purge"
    stranger = _Session(served.url)  # never loaded a page: no cookie
    assert stranger.post(purge, "csrf=" + "x" * 43) == 403
    session = _Session(served.url)
    status, page = session.get("/actors/parcels/dead-letters")
    assert status == 200
    token = _csrf(page)
    assert session.post(purge, "") == 403
    assert session.post(purge, "csrf=" + "y" * len(token)) == 403
    assert session.post(purge, f"csrf={token}", {"Origin": "http://evil.example"}) == 403
    assert session.post(purge, f"csrf={token}") == 303
    assert session.post(purge, f"csrf={token}", {"Origin": served.url}) == 303


def test_read_only_hides_and_refuses_the_actions(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard
) -> None:
    rabbit_broker.declare(Parcels)
    put_dead_letter(rabbit_broker, "kept", b"{}", {})
    served = start_dashboard("--read-only")
    wait_serving(served)
    session = _Session(served.url)
    status, page = session.get("/actors/parcels/dead-letters")
    assert status == 200
    assert "read-only" in page
    assert "kept" in page
    assert "Replay" not in page
    assert "Purge" not in page
    assert session.post("/actors/parcels/dead-letters/purge", "csrf=" + "x" * 43) == 403
