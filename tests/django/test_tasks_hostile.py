"""What a Django tasks worker takes from the wire is bounded: a 136-byte message from a plain
pika client cannot make it allocate more than the message is worth, nor choose how a task
is called."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pika
import pytest

from leveret.django.tasks import task_actor
from leveret.django.tasks_api import TaskResultStatus, task
from leveret.schemas import wire
from leveret.schemas.errors import ConfigurationError
from leveret.services import RabbitBroker
from leveret.services.topology import naming
from tests import raw_amqp
from tests.support import running, wait_until

pytestmark = [pytest.mark.rabbitmq]

DEFAULT = task_actor("default")
FORGED_ATTEMPT = 100_000_000  # the issue's: 1.6 GB peak before the fix


HANDLED: list[int] = []


@task()
def remember(n: int) -> None:
    """A task of the tests (an imported module's): notes its argument."""
    HANDLED.append(n)


def _call(task: str, *positional: Any, takes_context: bool = False) -> bytes:
    return json.dumps(
        {
            "task": task,
            "positional": list(positional),
            "keywords": {},
            "backend": "default",
            "queue_name": "default",
            "takes_context": takes_context,
        }
    ).encode()


def test_a_forged_attempt_header_allocates_nothing_in_proportion(
    shop_broker: RabbitBroker, finished: list[Any]
) -> None:
    """``x-leveret-attempt: 100000000`` on a task message: the task runs once, its result
    counts at most the queue's ATTEMPTS (2 here), and the worker's peak memory while
    handling it stays under 5 MB (it was 1.6 GB)."""
    body = _call(f"{__name__}.remember", 7)
    queue = naming.queue_name(shop_broker.namespace, DEFAULT.queue)
    with running(shop_broker, DEFAULT, threads=1):
        tracemalloc.start()
        try:
            with raw_amqp.client(shop_broker.url) as foreign:
                foreign.publish(
                    queue,
                    body,
                    pika.BasicProperties(
                        type="leveret.tasks.call",
                        message_id="f" * 32,
                        headers={wire.ATTEMPT: FORGED_ATTEMPT},
                    ),
                )
            wait_until(lambda: finished, 20, "the task to finish")
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    print(f"peak while handling: {peak / 2**20:.2f} MiB")  # shown with -s
    assert peak < 5 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    (result,) = finished
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert HANDLED == [7]
    attempts = result.attempts
    assert attempts == 2  # bounded by the queue's ATTEMPTS


def _publish(broker: RabbitBroker, body: bytes, **headers: Any) -> None:
    with raw_amqp.client(broker.url) as foreign:
        foreign.publish(
            naming.queue_name(broker.namespace, DEFAULT.queue),
            body,
            pika.BasicProperties(type="leveret.tasks.call", headers=headers or None),
        )


def test_a_task_is_called_as_it_is_defined_whatever_the_message_says(
    shop_broker: RabbitBroker, finished: list[Any]
) -> None:
    """A message claiming ``takes_context`` for a task without a context runs the task
    with its arguments (the context was passed as its first argument)."""
    HANDLED.clear()
    with running(shop_broker, DEFAULT, threads=1):
        _publish(shop_broker, _call(f"{__name__}.remember", 8, takes_context=True))
        wait_until(lambda: finished, 20, "the task to finish")
    assert [r.status for r in finished] == [TaskResultStatus.SUCCESSFUL]
    assert HANDLED == [8]


def test_an_oversized_task_name_is_dead_lettered_unread(shop_broker: RabbitBroker) -> None:
    """A task path of 100,000 characters is an invalid message, dead-lettered at once
    without being looked up (and its error names the limit)."""
    with running(shop_broker, DEFAULT, threads=1):
        _publish(shop_broker, _call("shop." + "a" * 100_000))
        wait_until(lambda: shop_broker.dead_letter_count(DEFAULT) == 1, 20, "the dead letter")
    (letter,) = shop_broker.dead_letters(DEFAULT)
    assert letter.headers[wire.ERROR_REASON] == "invalid_message"
    assert "255" in letter.headers[wire.ERROR_MESSAGE]


@pytest.mark.parametrize("attempts", [0, 1001, 10**9, "5", 2.5, True])
def test_task_attempts_are_checked_where_they_are_configured(attempts: object) -> None:
    """``OPTIONS["ATTEMPTS"]`` must be a whole number from 1 to 1000."""
    with pytest.raises(ConfigurationError, match="ATTEMPTS"):
        task_actor(f"checked-{attempts!s}".replace(".", "-"), {"ATTEMPTS": attempts})
