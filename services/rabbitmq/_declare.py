"""Internal: declaring `leveret.services.topology` steps on a pika channel."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika.exceptions
import pika.frame
from pika.channel import Channel

from leveret.schemas.errors import TopologyError
from leveret.services.rabbitmq._connection import describe
from leveret.services.topology import Step


def declare_async(channel: Channel, todo: list[Step], on_done: Callable[[], None]) -> None:
    """Declare `todo` one step after another on `channel`, then call `on_done`.

    A declaration the broker refuses (a queue that exists with other arguments) closes the
    channel: the channel's close callback receives the reason.
    """
    remaining = iter(todo)

    def next_step(_frame: pika.frame.Method[Any] | None = None) -> None:
        step = next(remaining, None)
        if step is None:
            on_done()
        elif step.kind == "exchange":
            channel.exchange_declare(
                step.name,
                exchange_type=step.exchange_type,
                durable=True,
                arguments=step.arguments or None,
                callback=next_step,
            )
        elif step.kind == "queue":
            channel.queue_declare(
                step.name, durable=True, arguments=step.arguments, callback=next_step
            )
        elif step.kind == "bind":
            channel.queue_bind(
                step.name, step.exchange, routing_key=step.routing_key, callback=next_step
            )
        else:
            channel.exchange_bind(
                step.name, step.exchange, routing_key=step.routing_key, callback=next_step
            )

    next_step()


def declarer(
    todo: list[Step],
    future: Future[None],
    retry: Callable[[tuple[list[Step], Future[None]]], None],
) -> Callable[[Channel], None]:
    """A channel-open callback that declares `todo` then closes the channel.

    A refusal by the broker fails `future`; a lost connection hands the work to `retry`, to
    be declared again once reconnected.
    """

    def on_open(channel: Channel) -> None:
        def on_closed(_channel: Channel, reason: BaseException) -> None:
            if future.done():
                return
            if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
                future.set_exception(TopologyError(f"declaring failed: {describe(reason)}"))
            else:
                retry((todo, future))

        def on_done() -> None:
            future.set_result(None)
            channel.close()

        channel.add_on_close_callback(on_closed)
        declare_async(channel, todo, on_done)

    return on_open
