"""The FastStream peer: ``faststream run bench.peers.faststream_app:app`` (async handlers,
one process) on a quorum queue, prefetch 100 (``BENCH_PEER_PREFETCH``)."""

from __future__ import annotations

import os

from faststream import FastStream
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue

from bench.peers.counting import handled, work_async

broker = RabbitBroker(
    os.environ.get("BENCH_PEER_URL", "amqp://"),
    default_channel=Channel(prefetch_count=int(os.environ.get("BENCH_PEER_PREFETCH", "100"))),
)
app = FastStream(broker)
queue = RabbitQueue(
    os.environ.get("BENCH_PEER_QUEUE", "bench_faststream"),
    durable=True,
    queue_type=QueueType.QUORUM,
)


@broker.subscriber(queue)
async def ping(body: dict[str, object]) -> None:
    await work_async()
    sent_at = body.get("sent_at")
    handled(sent_at if isinstance(sent_at, float) else None)
