"""DNS rebinding and cross-site requests: without a token only the loopback host names are
served (and the hosts named with --allowed-hosts); an `Origin` must be one of the
dashboard's own; a cross-site request that would do work (a dead-letter pass, any POST) is
refused by the Fetch Metadata headers before any work starts."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from urllib.parse import urlsplit

import pytest

from leveret.services import RabbitBroker
from tests.dashboard.conftest import (
    Served,
    StartDashboard,
    give_back_once,
    put_dead_letter,
    redelivered,
    wait_serving,
)
from tests.dashboard_actors import Parcels

pytestmark = [pytest.mark.timeout(60)]

TOKEN = "s3cret-token-for-the-tests-0123"
LETTERS = "/actors/parcels/dead-letters"
PURGE = LETTERS + "/purge"
# What Chromium sends for <img src> on another site's page, and for a link followed from one.
IMAGE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
LINK = {
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-User": "?1",
}
SAME_ORIGIN_LINK = {**LINK, "Sec-Fetch-Site": "same-origin"}


class _Client:
    """An HTTP client that keeps cookies (a browser's), with any headers, no redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(CookieJar()), _NoRedirect()
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return self._send(urllib.request.Request(self.base + path, headers=headers or {}))

    def post(self, path: str, body: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return self._send(
            urllib.request.Request(
                self.base + path,
                data=body.encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
                method="POST",
            )
        )

    def _send(self, request: urllib.request.Request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=20) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def _port(served: Served) -> int:
    port = urlsplit(served.url).port
    assert port is not None
    return port


def _with_letters(rabbit_broker: RabbitBroker, count: int = 3) -> None:
    rabbit_broker.declare(Parcels)
    for n in range(count):
        put_dead_letter(rabbit_broker, f"letter-{n}", b"{}", {})


def test_a_foreign_host_is_refused_without_a_token(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard
) -> None:
    """DNS rebinding: the attacker's name resolved to 127.0.0.1 gets neither the letters nor
    the CSRF pair, and cannot purge (with an Origin that matches its own Host)."""
    _with_letters(rabbit_broker)
    served = start_dashboard()
    wait_serving(served)
    port = _port(served)
    client = _Client(served.url)
    for path in ("/", "/api/overview", LETTERS, "/static/dashboard.js"):
        status, text = client.get(path, {"Host": f"rebind.attacker.example:{port}"})
        assert status == 400, (path, status)
        assert "--allowed-hosts" in text
        assert "letter-0" not in text
        assert 'name="csrf"' not in text
    status, _ = client.post(
        PURGE,
        "csrf=" + "x" * 43,
        {
            "Host": f"rebind.attacker.example:{port}",
            "Origin": f"http://rebind.attacker.example:{port}",
            "Cookie": "leveret_csrf=" + "x" * 43,
        },
    )
    assert status == 400
    assert rabbit_broker.dead_letter_count(Parcels) == 3
    # The loopback names, with the port, compared exactly.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert client.get("/", {"Host": host})[0] == 200, host
    for host in ("127.0.0.1", f"localhost.attacker.example:{port}", f"127.0.0.1:{port + 1}"):
        assert client.get("/", {"Host": host})[0] == 400, host


def test_a_rebinding_style_origin_is_refused(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard
) -> None:
    """An Origin (or Referer) that is not one of the dashboard's own origins is refused, GET
    and POST, even with the page's cookie and field: it is not compared with the Host."""
    _with_letters(rabbit_broker)
    served = start_dashboard()
    wait_serving(served)
    port = _port(served)
    client = _Client(served.url)
    status, page = client.get(LETTERS)
    assert status == 200
    token = _csrf(page)
    evil = f"http://rebind.attacker.example:{port}"
    assert client.get(LETTERS, {"Origin": evil})[0] == 403
    assert client.get("/api/overview", {"Origin": evil})[0] == 403
    assert client.post(PURGE, f"csrf={token}", {"Origin": evil})[0] == 403
    assert client.post(PURGE, f"csrf={token}", {"Origin": "null"})[0] == 403
    assert client.post(PURGE, f"csrf={token}", {"Referer": evil + LETTERS})[0] == 403
    # Headers no browser sends: refused, not a 500.
    assert client.get(LETTERS, {"Origin": "http://]"})[0] == 403
    assert client.post(PURGE, f"csrf={token}", {"Referer": "http://[x/"})[0] == 403
    assert rabbit_broker.dead_letter_count(Parcels) == 3
    # The dashboard's own origins, by any loopback name, are fine.
    for origin in (served.url, f"http://localhost:{port}"):
        assert client.post(PURGE, f"csrf={token}", {"Origin": origin})[0] == 303
    assert rabbit_broker.dead_letter_count(Parcels) == 0


def test_a_cross_site_image_request_runs_no_dead_letter_pass(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard
) -> None:
    """`<img src=…/dead-letters>` on another site's page: refused before the pass starts
    (the letters are still marked redelivered: nothing took and republished them)."""
    _with_letters(rabbit_broker)
    served = start_dashboard()
    wait_serving(served)
    client = _Client(served.url)
    give_back_once(rabbit_broker)
    for path in (LETTERS, LETTERS + "?offset=50", LETTERS + "/letter-1"):
        status, text = client.get(path, IMAGE)
        assert status == 403, path
        assert "cross-site" in text
    iframe = {**LINK, "Sec-Fetch-Dest": "iframe"}
    assert client.get(LETTERS, iframe)[0] == 403
    cross_site_post = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert client.post(PURGE, "csrf=x", cross_site_post)[0] == 403
    assert redelivered(rabbit_broker) == dict.fromkeys(["letter-0", "letter-1", "letter-2"], True)
    # The same request from the dashboard's own page does run a pass (the probe works).
    assert client.get(LETTERS, {**IMAGE, "Sec-Fetch-Site": "same-origin"})[0] == 200
    assert redelivered(rabbit_broker) == dict.fromkeys(["letter-0", "letter-1", "letter-2"], False)


def test_a_link_from_another_site_reaches_the_dashboard_but_reads_no_letters(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard
) -> None:
    """An operator following a link from a chat: the overview opens; a dead-letters page
    asks first (no pass) and its link, followed on the dashboard, shows the letters."""
    _with_letters(rabbit_broker)
    served = start_dashboard()
    wait_serving(served)
    client = _Client(served.url)
    give_back_once(rabbit_broker)
    status, page = client.get("/", LINK)
    assert status == 200
    assert "parcels" in page
    assert client.get("/actors/parcels", LINK)[0] == 200
    status, page = client.get(LETTERS + "?topic=x", LINK)
    assert status == 200
    assert "letter-0" not in page
    assert 'href="/actors/parcels/dead-letters?topic=x"' in page
    assert redelivered(rabbit_broker) == dict.fromkeys(["letter-0", "letter-1", "letter-2"], True)
    status, page = client.get(LETTERS, SAME_ORIGIN_LINK)
    assert status == 200
    assert "letter-0" in page


def test_allowed_hosts_names_the_hosts_a_reverse_proxy_passes(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard
) -> None:
    _with_letters(rabbit_broker)
    served = start_dashboard("--allowed-hosts", "dash.example.com, ops.example.com:8443")
    wait_serving(served)
    client = _Client(served.url)
    proxied = {"Host": "dash.example.com"}
    status, page = client.get(LETTERS, proxied)
    assert status == 200
    token = _csrf(page)
    assert client.get("/", {"Host": "ops.example.com:8443"})[0] == 200
    assert client.get("/", {"Host": "ops.example.com"})[0] == 400
    assert client.get("/", {"Host": "evil.example.com"})[0] == 400
    # Behind TLS: the browser's Origin is https://dash.example.com.
    evil = {**proxied, "Origin": "https://evil.example.com"}
    assert client.post(PURGE, f"csrf={token}", evil)[0] == 403
    assert (
        client.post(PURGE, f"csrf={token}", {**proxied, "Origin": "https://dash.example.com"})[0]
        == 303
    )
    assert rabbit_broker.dead_letter_count(Parcels) == 0


def test_allowed_hosts_from_the_environment_and_with_a_token(
    start_dashboard: StartDashboard,
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # A token and no list: any Host (the token is what keeps others out).
    served = start_dashboard(env={"LEVERET_DASHBOARD_TOKEN": TOKEN})
    wait_serving(served)
    assert _Client(served.url).get("/", {**auth, "Host": "dash.internal:8700"})[0] == 200
    # A token and a list: the list applies too.
    served = start_dashboard(
        env={"LEVERET_DASHBOARD_TOKEN": TOKEN, "LEVERET_DASHBOARD_ALLOWED_HOSTS": "dash.internal"}
    )
    wait_serving(served)
    client = _Client(served.url)
    assert client.get("/", {**auth, "Host": "dash.internal"})[0] == 200
    assert client.get("/", {**auth, "Host": "rebind.attacker.example"})[0] == 400


@pytest.mark.parametrize(
    "hosts", ["*", "http://dash.example.com/", "dash.example.com/x", "dash example", ".x.com:99999"]
)
def test_an_allowed_host_that_is_not_a_host_name_is_refused_at_start(
    start_dashboard: StartDashboard, hosts: str
) -> None:
    served = start_dashboard("--allowed-hosts", hosts)
    assert served.process.wait(20) == 2
    assert "is not a host name: give each host as the reverse proxy passes it" in (
        served.process.log()
    )
