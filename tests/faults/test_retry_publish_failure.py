"""A retry whose publish fails is not lost: the original was not acked and comes back."""

from __future__ import annotations

import time

import pika
import pytest

from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests.services.test_retries import Flaky, Retrier, _use_clock, calls
from tests.support import running

pytestmark = [pytest.mark.fault]


def test_retry_publish_refused_leaves_the_original_to_come_back(
    rabbit_broker: RabbitBroker,
) -> None:
    """The delay levels vanish under a running worker: the failing message's retry cannot be
    published, so the original is not acked; it is delivered again (attempt 1 again), the
    worker declares the levels again, and the message is then retried and handled."""
    _use_clock(time.time)
    calls.items.clear()
    rabbit_broker.declare(Retrier)
    with running(rabbit_broker, Retrier, threads=1):
        connection = pika.BlockingConnection(pika.URLParameters(rabbit_broker.url))
        channel = connection.channel()
        channel.exchange_delete(naming.delay_exchange(rabbit_broker.namespace, 27))
        connection.close()
        Retrier.send(Flaky(key="lost?", fail_times=1))
        items = calls.wait_for(3, timeout_s=30)
    assert [attempt for _key, attempt, _at, _id in items] == [1, 1, 2]
    assert len({message_id for *_rest, message_id in items}) == 1
