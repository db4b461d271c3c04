"""Internal: declaring `leveret.services.topology.declarations` steps on a pika channel."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika.exceptions
import pika.frame
from pika.channel import Channel

from leveret.schemas.errors import TopologyError
from leveret.services.observability.logs import get_logger
from leveret.services.rabbitmq._connection import describe
from leveret.services.topology.declarations import Step, at_least_once_policy_command

log = get_logger("leveret.topology")

_PRECONDITION_FAILED = 406
_warned: set[str] = set()  # queues whose legacy arguments were logged (once per process)


def declare_async(channel: Channel, todo: list[Step], on_done: Callable[[], None]) -> None:
    """Declare `todo` one step after another on `channel`, then call `on_done`.

    A declaration the broker refuses (a queue that exists with other arguments) closes the
    channel: the channel's close callback receives the reason. A queue step with legacy
    arguments is first tried on channels of its own (see `_declare_either`).
    """
    remaining = iter(todo)

    def next_step(_frame: pika.frame.Method[Any] | None = None) -> None:
        if not channel.is_open:
            return  # closed while a queue was tried on a channel of its own: its close
            # callback has the reason
        step = next(remaining, None)
        if step is None:
            on_done()
        elif step.kind == "queue" and step.legacy_arguments is not None:
            _declare_either(channel, step, next_step)
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


def _declare_either(channel: Channel, step: Step, then: Callable[[], None]) -> None:
    """Declare `step`'s queue with its arguments or, if it already exists with its legacy
    arguments, accept it as it is (logged once); then call `then`.

    Each try runs on a new channel of `channel`'s connection, since a refused declaration
    closes its channel and `channel` may hold deliveries. A queue that has neither set of
    arguments is declared on `channel` itself, which the broker then closes with the reason.
    """
    legacy = step.legacy_arguments or {}
    refusals: list[str] = []

    def attempt(arguments: dict[str, Any], on_refused: Callable[[], None]) -> None:
        finished = False

        def on_open(side: Channel) -> None:
            def on_declared(_frame: pika.frame.Method[Any]) -> None:
                nonlocal finished
                finished = True
                side.close()
                if arguments is legacy:
                    _warn_legacy(step.name, step.arguments, legacy)
                then()

            def on_closed(_side: Channel, reason: BaseException) -> None:
                if finished:
                    return
                if not isinstance(reason, pika.exceptions.ChannelClosedByBroker):
                    return  # the connection is gone: `channel`'s close callback handles it
                refusals.append(describe(reason))
                if reason.reply_code == _PRECONDITION_FAILED:
                    on_refused()
                else:
                    declare_here()

            side.add_on_close_callback(on_closed)
            side.queue_declare(step.name, durable=True, arguments=arguments, callback=on_declared)

        if channel.is_open:
            channel.connection.channel(on_open_callback=on_open)

    def declare_here() -> None:
        """Declare on `channel`: the broker closes it with the reason of its refusal."""
        if channel.is_open:
            channel.queue_declare(
                step.name, durable=True, arguments=step.arguments, callback=lambda _f: then()
            )

    def neither() -> None:
        log.warning("queue_arguments_differ", queue=step.name, refusals=refusals)
        declare_here()

    attempt(step.arguments, lambda: attempt(legacy, neither))


def _warn_legacy(queue: str, arguments: dict[str, Any], legacy: dict[str, Any]) -> None:
    if queue in _warned:
        return
    _warned.add(queue)
    log.warning(
        "queue_declared_by_older_leveret",
        queue=queue,
        lacks={key: value for key, value in arguments.items() if legacy.get(key) != value},
        effect="used as it is: unless a policy gives it these, it dead-letters at most once "
        "(a message past its delivery limit can be lost while its .dlq has no leader)",
        remedy="give it the missing arguments as a policy, or add them to the policy that "
        "already applies to it (rabbitmqctl list_queues name effective_policy_definition "
        "shows it; docs/deployment.md, 'Queues declared by Leveret 0.1')",
        command=at_least_once_policy_command(queue),
    )


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
            if not future.done():  # declared again meanwhile (see DeclarationQueue)
                future.set_result(None)
            channel.close()

        channel.add_on_close_callback(on_closed)
        declare_async(channel, todo, on_done)

    return on_open
