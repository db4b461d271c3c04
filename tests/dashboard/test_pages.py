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
