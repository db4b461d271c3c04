"""The Dramatiq peer: ``dramatiq bench.peers.dramatiq_app -p 1 -t 8`` (its defaults but one
process, as Leveret's single worker process is compared)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.peers.counting import handled, work

# Publisher confirms for the publish run (``BENCH_PEER_CONFIRM=1``), as Leveret always has.
broker = RabbitmqBroker(
    url=os.environ["BENCH_PEER_URL"],
    confirm_delivery=os.environ.get("BENCH_PEER_CONFIRM") == "1",
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=os.environ.get("BENCH_PEER_QUEUE", "bench_dramatiq"), max_retries=0)
def ping(seq: int, sent_at: float, payload: str) -> None:
    work()
    handled(sent_at)
