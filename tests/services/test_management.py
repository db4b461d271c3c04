"""RabbitMQ's management API as `leveret status` and the dashboard read it: a figure it does
not give yet is not known, never 0."""

from __future__ import annotations

import os

from leveret.services import RabbitBroker
from leveret.services.rabbitmq.management import ManagementAPI, default_management_url
from leveret.services.topology import naming
from tests.dashboard_actors import Parcels
from tests.support import RABBIT_URL, wait_until

MANAGEMENT_URL = os.environ.get("LEVERET_MANAGEMENT_URL") or default_management_url(RABBIT_URL)


def test_a_queue_listed_before_its_counts_is_named_as_uncounted(
    rabbit_broker: RabbitBroker,
) -> None:
    """The API lists a queue declared moments ago without ``messages_ready`` until its next
    collection (4 to 7 s seen, on 3.10 and 4.3): `queue_counts` names it (its 0s mean
    nothing: an empty-looking ``.dlq`` may hold letters), and no longer once counted."""
    rabbit_broker.declare(Parcels)
    namespace = rabbit_broker.namespace
    declared = {naming.queue_name(namespace, "parcels"), naming.dlq_name(namespace, "parcels")}
    api = ManagementAPI(MANAGEMENT_URL, RABBIT_URL)
    records = {r["name"]: r for r in api.queue_records(namespace + ".")}
    figures, uncounted, _complete = api.queue_counts(namespace + ".")
    print("just declared, uncounted:", sorted(uncounted & declared))
    assert declared <= set(figures)
    # Read before the listing: a record without counts then is still without them or
    # counted since (never counted, then uncounted).
    assert {n for n in declared if "messages_ready" not in records.get(n, {})} >= (
        uncounted & declared
    )

    def counted() -> bool:
        return not api.queue_counts(namespace + ".")[1] & declared

    wait_until(counted, 20, "the API's counts of the queues")
    figures, _uncounted, complete = api.queue_counts(namespace + ".")
    assert complete
    assert [figures[name].ready for name in sorted(declared)] == [0, 0]
