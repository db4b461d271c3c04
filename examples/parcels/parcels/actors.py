"""Parcels delivered to the streets the depot knows: `leveret worker parcels.actors`.

A parcel for a street missing from ``streets.txt`` fails with `AddressUnknown` and, as no
retry can help, goes to the dead-letter queue at once (``parcels.dlq``). Add the street,
then replay the dead letter (`leveret dlq replay parcels` or the dashboard's Replay button).
"""

from __future__ import annotations

from pathlib import Path

from leveret import NO_RETRY, Actor, Context, Message, cron, handler, schedule

STREETS = Path(__file__).with_name("streets.txt")


class Parcel(Message, topic="parcels.parcel"):
    """A parcel to deliver."""

    number: int
    address: str


class AddressUnknown(Exception):
    """The depot knows no street of that name."""


class Parcels(Actor, queue="parcels"):
    """Delivers parcels to known streets."""

    retry = NO_RETRY  # an unknown street stays unknown until someone adds it
    time_limit_s = 30

    @handler
    def deliver(self, msg: Parcel, ctx: Context) -> None:
        if msg.address not in known_streets():
            raise AddressUnknown(f"no street called {msg.address!r}")
        ctx.log.info("parcel_delivered", number=msg.number, address=msg.address)


def known_streets() -> set[str]:
    """The streets listed in ``streets.txt``, read at each delivery."""
    return {line.strip() for line in STREETS.read_text().splitlines() if line.strip()}


# The depot's own round, every morning (`leveret scheduler parcels.actors` sends it).
depot_round = schedule(
    "parcels.morning-round",
    cron("0 6 * * *"),
    message=Parcel(number=0, address="Depot Road"),
    to=Parcels,
)
