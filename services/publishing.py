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

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from leveret.actors.actor import Actor, ActorRef
from leveret.actors.function import as_actor_class
from leveret.schemas import wire
from leveret.schemas.codec import encode
from leveret.schemas.envelope import Envelope, deadline_header
from leveret.schemas.errors import InvalidArgument
from leveret.schemas.message import Message
from leveret.services import config
from leveret.services.middleware import MiddlewareChain, Publishing, PublishOperation
from leveret.services.observability.logs import get_logger
from leveret.services.topology import naming
from leveret.services.topology.addresses import Address, Addresses
from leveret.services.topology.delays import delay_seconds
from leveret.services.transport import OutgoingMessage, PublishResult, Route, Transport

if TYPE_CHECKING:
    from leveret.services.asking import ReplySink

MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""A request larger than this is refused at the call: a worker would dead-letter it unread
(its default largest body), and RabbitMQ 4 refuses a message over 16 MiB by closing the
channel every ask of the process shares."""

log = get_logger("leveret.broker")

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
    headers: dict[str, Any] | None = None,
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


class Outbound:
    """The one way out of a `Broker`: messages built, middleware called, one transport call.

    Every publishing method of `Broker` is a thin layer over this: `publish` and
    `publish_async` build the messages (`outgoing`) between the middleware's
    ``before_publish`` and ``after_publish`` and hand them to the transport; `prepare`
    builds one to publish later; `publish_items` publishes what was built.

    Args:
        transport: Where the messages go.
        middleware: The broker's chain, whose publish hooks run around each call.
    """

    def __init__(self, transport: Transport, middleware: MiddlewareChain) -> None:
        self.transport = transport
        self.middleware = middleware
        self.addresses = Addresses(transport.namespace)

    def recipient(self, actor: ActorRef, message: Message) -> type[Actor]:
        """The class of the actor `message` is sent to, checked: its queue's name fits and
        one of its handlers takes the message.

        Raises:
            NotHandled: None of the actor's handlers takes the message.
            ConfigurationError: The actor's queue names are too long in this namespace.
        """
        cls = as_actor_class(actor)
        naming.check_queue(self.transport.namespace, cls.queue)
        cls.handler_for(message)
        return cls

    def publish(
        self, messages: list[Message], actor: type[Actor] | None, options: PublishOptions
    ) -> list[str]:
        """Build `messages` (to `actor`'s queue, or by topic), publish them, wait for the
        confirms; returns their ids."""
        with self._outgoing(messages, actor, options) as publishing:
            self._publish_items(publishing.items, options.timeout_s)
        return publishing.message_ids

    async def publish_async(
        self, messages: list[Message], actor: type[Actor] | None, options: PublishOptions
    ) -> list[str]:
        """`publish`, awaiting the confirms."""
        with self._outgoing(messages, actor, options) as publishing:
            items = publishing.items
            result = await self.transport.publish_async(items, timeout_s=options.timeout_s)
            log_unroutable(items, result.unroutable)
        return publishing.message_ids

    def prepare(
        self, message: Message, actor: type[Actor] | None, options: PublishOptions
    ) -> OutgoingMessage:
        """Build `message` now, between the middleware's hooks (operation ``prepare``)."""
        with self._outgoing([message], actor, options, "prepare") as publishing:
            return publishing.items[0]

    def ask(
        self,
        message: Message,
        actor: type[Actor] | None,
        options: PublishOptions,
        deadline_s: float,
        sink: Callable[[str], ReplySink],
    ) -> OutgoingMessage:
        """Build `message` as a request carrying `deadline_s` (to `actor`'s queue, or by
        topic for ``ask_all``) and hand it to the transport's asking role, with the sink
        `sink` makes for its message id; between the publish hooks (operation ``ask`` or
        ``ask_all``), whose ``after_publish`` means handed over, not answered."""
        operation: PublishOperation = "ask" if actor is not None else "ask_all"
        extra = {wire.DEADLINE: deadline_header(deadline_s)}
        with self._outgoing([message], actor, options, operation, extra) as built:
            item = built.items[0]
            if len(item.body) > MAX_REQUEST_BYTES:
                raise InvalidArgument(
                    f"the request is {len(item.body)} bytes of JSON, over the "
                    f"{MAX_REQUEST_BYTES} bytes an ask may send (a worker would not read "
                    "it); send a reference to the data instead"
                )
            self.transport.asking.request(item, sink(item.envelope.message_id))
        return item

    def publish_prepared(
        self, items: Sequence[OutgoingMessage], timeout_s: float | None, *, each: bool = False
    ) -> PublishResult:
        """Publish messages built earlier by `prepare` (`each`: every one on its own, errors
        returned), between the middleware's publish hooks (operation ``publish_prepared``;
        with `each`, `after_publish` sees no error: each message's is in the result)."""
        routes = {(item.route.topic, item.route.queue) for item in items}
        if len(routes) == 1:
            topic, queue = next(iter(routes))
            address = self._address(queue, topic)
        else:  # sends and publishes may be mixed: no one address
            address = Address("", "")
        publishing = Publishing(
            "publish_prepared",
            address.exchange,
            address.routing_key,
            len(items),
            message_ids=message_ids(items),
        )
        self.middleware.before_publish(publishing)
        try:
            result = self._publish_items(items, timeout_s, each=each)
        except BaseException as exc:
            self.middleware.after_publish(publishing, exc)
            raise
        self.middleware.after_publish(publishing, None)
        return result

    def _address(self, queue: str | None, topic: str) -> Address:
        """Where the middleware is told a call goes: the actor's queue, else the events
        exchange by `topic` (``""`` for a batch of several topics)."""
        return self.addresses.queue(queue) if queue is not None else self.addresses.topic(topic)

    def _publish_items(
        self, items: Sequence[OutgoingMessage], timeout_s: float | None, *, each: bool = False
    ) -> PublishResult:
        if each:
            result = self.transport.publish_each(items)
        else:
            result = self.transport.publish(items, timeout_s)
        log_unroutable(items, result.unroutable)
        return result

    @contextlib.contextmanager
    def _outgoing(
        self,
        messages: list[Message],
        actor: type[Actor] | None,
        options: PublishOptions,
        operation: PublishOperation | None = None,
        leveret_headers: dict[str, Any] | None = None,
    ) -> Iterator[_Built]:
        """The messages built for the wire (to `actor`'s queue, or by topic), to be published
        inside the ``with``: all of it between the middleware's publish hooks, which see
        the ``with``'s error. `leveret_headers` are Leveret's own (an ask's deadline),
        added after the middleware's."""
        if actor is None:
            topics = {message.topic() for message in messages}
            address = self._address(None, next(iter(topics)) if len(topics) == 1 else "")
        else:
            address = self._address(actor.queue, "")
        publishing = Publishing(
            operation or ("publish" if actor is None else "send"),
            address.exchange,
            address.routing_key,
            len(messages),
            options.correlation_id,
        )
        self.middleware.before_publish(publishing)
        try:
            headers = _middleware_headers(publishing.headers)
            if leveret_headers:
                headers = {**(headers or {}), **leveret_headers}
            items = outgoing(
                messages, options, queue=None if actor is None else actor.queue, headers=headers
            )
            publishing.message_ids = message_ids(items)
            yield _Built(items, publishing.message_ids)
        except BaseException as exc:
            self.middleware.after_publish(publishing, exc)
            raise
        self.middleware.after_publish(publishing, None)


@dataclass(frozen=True, slots=True)
class _Built:
    """What `Outbound._outgoing` built: the messages, and their ids (taken once)."""

    items: list[OutgoingMessage]
    message_ids: list[str]


def _middleware_headers(headers: dict[str, str]) -> dict[str, str] | None:
    """What the middleware's ``before_publish`` added, but Leveret's own headers (those
    are Leveret's to set: an attempt count or failure headers are never forged so)."""
    if not headers:
        return None
    kept = {k: v for k, v in headers.items() if not k.lower().startswith(wire.RESERVED_PREFIX)}
    if len(kept) != len(headers):
        log.warning(
            "middleware_header_dropped",
            headers=sorted(set(headers) - set(kept)),
            hint="headers starting with x-leveret- are Leveret's own",
        )
    return kept or None


def message_ids(items: Sequence[OutgoingMessage]) -> list[str]:
    """The ids of built messages, in order."""
    return [item.envelope.message_id for item in items]


def log_unroutable(items: Sequence[OutgoingMessage], unroutable: list[int]) -> None:
    """Log each fan-out (by its index in `items`) that no queue took: not an error."""
    for index in unroutable:
        envelope = items[index].envelope
        log.info(
            "message_unroutable",
            topic=envelope.topic,
            message_id=envelope.message_id,
            hint="no queue is bound to this topic: no actor handles it (yet)",
        )


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
