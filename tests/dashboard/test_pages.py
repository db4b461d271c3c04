"""Dead-letter pages: 50 to a page with next and previous, and the filters (topic, error
type, text) applied while the queue is read; nothing is removed by reading."""

from __future__ import annotations

import re
import urllib.parse
import urllib.request

import pytest

from leveret.services import RabbitBroker
from tests.dashboard.conftest import StartDashboard, put_dead_letter, wait_serving
from tests.dashboard_actors import Parcels

pytestmark = [pytest.mark.timeout(90)]


def _ids(url: str) -> list[str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        page = response.read().decode()
    return re.findall(r'<input type="checkbox" name="id" value="([^"]+)"', page)


def test_pages_and_filters(rabbit_broker: RabbitBroker, start_dashboard: StartDashboard) -> None:
    rabbit_broker.declare(Parcels)
    for n in range(60):
        kind = "Timeout" if n % 3 == 0 else "ValueError"
        put_dead_letter(
            rabbit_broker,
            f"letter-{n:02d}",
            f'{{"number": {n}, "address": "{"Elm St" if n % 5 == 0 else "Oak Ave"}"}}'.encode(),
            {"x-leveret-error-type": f"myapp.errors.{kind}", "x-leveret-error-message": "boom"},
            topic="parcels.urgent" if n % 2 == 0 else "tests.dashboard.parcel",
        )
    served = start_dashboard()
    wait_serving(served)
    base = served.url + "/actors/parcels/dead-letters"

    first = _ids(base)
    assert first == [f"letter-{n:02d}" for n in range(50)]  # oldest first
    assert _ids(base + "?offset=50") == [f"letter-{n:02d}" for n in range(50, 60)]

    def filtered(**query: str) -> list[str]:
        return _ids(base + "?" + urllib.parse.urlencode(query))

    assert filtered(topic="parcels.urgent") == [f"letter-{n:02d}" for n in range(0, 60, 2)]
    assert filtered(error_type="timeout") == [f"letter-{n:02d}" for n in range(0, 60, 3)]
    assert filtered(text="elm st") == [f"letter-{n:02d}" for n in range(0, 60, 5)]
    assert filtered(topic="parcels.urgent", error_type="Timeout") == [
        f"letter-{n:02d}" for n in range(0, 60, 6)
    ]
    assert filtered(text="letter-07") == ["letter-07"]  # the id too
    assert filtered(error_type="KeyError") == []
    # Reading took nothing away, and kept the order.
    assert rabbit_broker.dead_letter_count(Parcels) == 60
    assert _ids(base) == first


def test_replay_a_selection_then_all_then_purge(
    rabbit_broker: RabbitBroker, start_dashboard: StartDashboard
) -> None:
    """The page's three actions over HTTP, with the page's own CSRF value."""
    rabbit_broker.declare(Parcels)
    for n in range(6):
        put_dead_letter(rabbit_broker, f"letter-{n}", f'{{"number": {n}}}'.encode(), {})
    served = start_dashboard()
    wait_serving(served)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    base = served.url + "/actors/parcels/dead-letters"
    with opener.open(base, timeout=30) as response:
        token = re.findall(r'name="csrf" value="([^"]+)"', response.read().decode())[0]

    def post(action: str, fields: list[tuple[str, str]]) -> str:
        body = urllib.parse.urlencode([("csrf", token), *fields]).encode()
        with opener.open(f"{base}/{action}", data=body, timeout=30) as response:
            return response.read().decode()  # the list again, after the redirect

    page = post("replay", [("id", "letter-1"), ("id", "letter-4")])
    assert "replayed 2 dead letter(s)" in page
    # (Which ones, not their order: a run here once saw them rotated; see the session note.)
    assert sorted(_ids(base)) == ["letter-0", "letter-2", "letter-3", "letter-5"]
    assert rabbit_broker.message_count(f"{rabbit_broker.namespace}.parcels") == 2
    selected = [("id", "letter-0"), ("id", "letter-2"), ("id", "letter-3")]
    assert "replayed 3 dead letter(s)" in post("replay", selected)
    assert "replayed 1 dead letter(s)" in post("replay", [("all", "1")])
    assert _ids(base) == []
    assert rabbit_broker.message_count(f"{rabbit_broker.namespace}.parcels") == 6
    put_dead_letter(rabbit_broker, "letter-9", b"{}", {})
    assert "purged 1 dead letter(s)" in post("purge", [])
    assert rabbit_broker.dead_letter_count(Parcels) == 0
