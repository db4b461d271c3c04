"""Leveret's side of the ask scenario: the actor ``leveret worker`` runs, and its callers.

The worker is started as a user starts it: ``leveret worker bench.asking.leveret_side``
(its defaults: 8 threads, adaptive prefetch), in a process of its own.
"""

from __future__ import annotations

from bench.common import PAYLOAD
from leveret.actors import Actor, handler
from leveret.schemas import Message
from leveret.services import RabbitBroker

ASK_TIMEOUT_S = 10.0


class PriceAsked(Message, topic="bench.price_asked"):
    """The request: a sequence number and a 64-byte payload."""

    seq: int
    payload: str


class Price(Message, topic="bench.price"):
    """The answer: the request's sequence number and a price."""

    seq: int
    cents: int


class Quoter(Actor, queue="quote"):
    """Answers every `PriceAsked` at once."""

    @handler
    def quote(self, msg: PriceAsked) -> Price:
        return Price(seq=msg.seq, cents=990)


def _checked(answer: Price, seq: int) -> None:
    if answer.seq != seq:
        raise RuntimeError(f"the answer to request {seq} is the answer to {answer.seq}")


class LeveretCaller:
    """One caller (any thread): ``broker.ask`` on the process's broker."""

    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker

    def ask(self, seq: int) -> None:
        answer = self.broker.ask(
            Quoter, PriceAsked(seq=seq, payload=PAYLOAD), timeout=ASK_TIMEOUT_S
        )
        _checked(answer, seq)

    def close(self) -> None:
        """Nothing of its own: the broker is shared."""


class LeveretAsyncCaller:
    """The callers of one event loop: ``await broker.ask_async``."""

    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker

    async def ask(self, seq: int) -> None:
        answer = await self.broker.ask_async(
            Quoter, PriceAsked(seq=seq, payload=PAYLOAD), timeout=ASK_TIMEOUT_S
        )
        _checked(answer, seq)

    async def close(self) -> None:
        """Nothing of its own: the broker is shared."""
