"""Actors for the observability tests (metrics, heartbeats, tracing) run by `leveret worker`.

`Counted` succeeds, fails once and then succeeds (one retry), or always fails (a retry, then
the dead-letter queue), as each message says. `Relay` publishes a `Relayed` from its
handler through the context; `Ends` handles it.
"""

from __future__ import annotations

from leveret.actors import Actor, Context, RetryPolicy, fixed, handler
from leveret.schemas import Message


class Work(Message, topic="obs.work"):
    """What `Counted` does: ``ok``, ``flaky`` (fails on its first attempt) or ``broken``."""

    n: int
    kind: str = "ok"


class Counted(Actor, queue="counted"):
    """Two attempts in all, no wait between them."""

    retry = RetryPolicy(attempts=2, backoff=fixed(0))

    @handler
    def work(self, msg: Work, ctx: Context) -> None:
        if msg.kind == "broken" or (msg.kind == "flaky" and ctx.attempt == 1):
            raise RuntimeError(f"work {msg.n} failed on attempt {ctx.attempt}")


class Start(Message, topic="obs.start"):
    n: int


class Relayed(Message, topic="obs.relayed"):
    n: int


class Relay(Actor, queue="relay"):
    """Publishes a `Relayed` for each `Start`."""

    @handler
    def start(self, msg: Start, ctx: Context) -> None:
        ctx.publish(Relayed(n=msg.n))


class Ends(Actor, queue="ends"):
    """Handles each `Relayed` (the end of the chain)."""

    @handler
    def end(self, msg: Relayed, ctx: Context) -> None:
        ctx.log.info("chain_ended", n=msg.n)
