"""The Celery peer: ``celery -A bench.peers.celery_app worker -P threads -c 8`` on a quorum
queue, acks late (after the task ran, as Leveret acks)."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

from bench.peers.counting import handled, work

QUEUE = os.environ.get("BENCH_PEER_QUEUE", "bench_celery")

app = Celery("bench_peer", broker=os.environ.get("BENCH_PEER_URL", "amqp://"))
app.conf.update(
    task_queues=[Queue(QUEUE, queue_arguments={"x-queue-type": "quorum"})],
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    # Publisher confirms for the publish run (``BENCH_PEER_CONFIRM=1``), as Leveret always has.
    broker_transport_options={"confirm_publish": os.environ.get("BENCH_PEER_CONFIRM") == "1"},
)


@app.task(name="bench.ping", ignore_result=True)
def ping(seq: int, sent_at: float, payload: str) -> None:
    work()
    handled(sent_at)
