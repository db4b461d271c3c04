"""The one prepare step of every publish and send: options checked, messages built.

Every way of publishing (`Broker.publish`, `publish_many`, `send`, their async forms,
`Broker.prepare` for Django's on-commit and outbox publishing, and through them `Actor.send`,
``ctx.publish`` and `leveret.publish`) takes the keyword arguments of
`leveret.actors.dispatch.PublishArgs`. They are checked once, by `publish_options`, into a
`PublishOptions`; `outgoing` then builds each `Message` into the `OutgoingMessage` a
transport publishes. A message has three shapes on its way out: the `Message`, the
`OutgoingMessage` (its `Envelope` and JSON body, route and delay), and the wire form the
transport writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from leveret.schemas.codec import encode
from leveret.schemas.envelope import Envelope
from leveret.schemas.errors import InvalidArgument
from leveret.schemas.message import Message
from leveret.services import config
from leveret.services.topology.delays import delay_seconds
from leveret.services.transport import OutgoingMessage, Route

MAX_CORRELATION_ID_BYTES = 255
"""AMQP's limit for a string property such as ``correlation_id``."""


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """The options of one publishing call, checked (`publish_options` builds it).

    Attributes:
        delay_s: Whole seconds the messages wait in the broker (0: none).
        correlation_id: Carried by every message of the call.
        timeout_s: Seconds to wait for the confirms (None: the transport's default).
    """

    delay_s: int = 0
    correlation_id: str | None = None
    timeout_s: float | None = None


def publish_options(
    *,
    delay: float | timedelta | None = None,
    eta: datetime | None = None,
    correlation_id: str | None = None,
    timeout: float | None = None,
) -> PublishOptions:
    """The caller's keyword arguments (`leveret.actors.dispatch.PublishArgs`), checked.

    Raises:
        InvalidArgument: An invalid delay, eta or timeout, or a correlation id over 255
            bytes.
        TypeError: A keyword argument that is none of these (a typo, say).
    """
    check_correlation_id(correlation_id)
    return PublishOptions(
        0 if delay is None and eta is None else delay_seconds(delay, eta, now=datetime.now(UTC)),
        correlation_id,
        check_timeout(timeout),
    )


def outgoing(
    messages: Iterable[Message],
    options: PublishOptions,
    *,
    queue: str | None = None,
    headers: dict[str, str] | None = None,
) -> list[OutgoingMessage]:
    """`messages` built for the wire, each with a new message id.

    Args:
        messages: The messages, in order.
        options: The call's options (delay and correlation id).
        queue: Deliver to this actor queue only; fan out by topic if None.
        headers: Headers every message carries (the middleware's, such as the trace
            context); shared, not copied: nothing changes them afterwards.
    """
    # One Route per topic, not per message: a large batch keeps every object it makes
    # alive until confirmed, and fewer objects mean fewer full garbage collections. One
    # timestamp for the batch too (whole seconds on the wire).
    routes: dict[str, Route] = {}
    now = datetime.now(UTC)
    new_envelope = Envelope.new
    correlation_id, delay_s = options.correlation_id, options.delay_s
    items = []
    for message in messages:
        topic = message.topic()
        route = routes.get(topic)
        if route is None:
            route = routes[topic] = Route(topic, queue)
        envelope = new_envelope(
            topic, correlation_id=correlation_id, headers=headers, timestamp=now
        )
        items.append(OutgoingMessage(envelope, encode(message), route, delay_s))
    return items


def check_correlation_id(correlation_id: str | None) -> None:
    """Fail the call at once on a correlation id AMQP cannot carry.

    Raises:
        InvalidArgument: Not a string, or longer than 255 bytes in UTF-8.
    """
    if correlation_id is None:
        return
    if not isinstance(correlation_id, str):
        raise InvalidArgument(
            f"correlation_id must be a string, not {type(correlation_id).__name__}"
        )
    size = len(correlation_id.encode("utf-8", "replace"))
    if size > MAX_CORRELATION_ID_BYTES:
        raise InvalidArgument(
            f"correlation_id is {size} bytes; AMQP carries at most {MAX_CORRELATION_ID_BYTES}"
        )


def check_timeout(timeout: float | None) -> float | None:
    """A publish timeout as given, checked: a positive, finite number of seconds, or None.

    Raises:
        InvalidArgument: Anything else.
    """
    if timeout is None:
        return None
    if not config.positive_seconds(timeout):
        raise InvalidArgument(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)
