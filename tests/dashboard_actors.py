"""An actor for the dashboard's browser tests (run by `leveret worker` in a subprocess).

`Parcels.deliver` fails while the file named by ``$LEVERET_TEST_BROKEN`` exists (no
retries: the message is dead-lettered at once) and, once it is gone, appends the parcel's
number to the file named by ``$LEVERET_TEST_DELIVERED``.
"""

from __future__ import annotations

import os
from pathlib import Path

from leveret.actors import NO_RETRY, Actor, handler
from leveret.actors.schedules import cron, schedule
from leveret.schemas import Message


class Parcel(Message, topic="tests.dashboard.parcel"):
    """Something to deliver."""

    number: int
    address: str


class AddressUnknown(Exception):
    """The handler's failure while it is broken."""


class Parcels(Actor, queue="parcels"):
    """Delivers parcels, or fails while broken."""

    retry = NO_RETRY

    @handler
    def deliver(self, msg: Parcel) -> None:
        if Path(os.environ["LEVERET_TEST_BROKEN"]).exists():
            raise AddressUnknown(f"no street called {msg.address!r}")
        with open(os.environ["LEVERET_TEST_DELIVERED"], "a") as out:
            out.write(f"{msg.number}\n")


# A schedule the overview lists, with its next tick (no scheduler runs in the tests).
depot_round = schedule(
    "parcels.depot-round",
    cron("0 6 * * *"),
    message=Parcel(number=0, address="the depot"),
    to=Parcels,
)
