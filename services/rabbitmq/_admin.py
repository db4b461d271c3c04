"""Internal: short-lived blocking channels for administrative work, pika errors translated.

Counting, deleting, purging and the dead-letter passes run on a `BlockingConnection` of
their own. Whatever pika raises on the way is translated into Leveret's errors here, at the
boundary: a connection that fails is `BrokerConnectionError`, a queue that does not exist
`NotFound`, any other refusal by the broker `OperationError`.

Opening one is bounded, per node, like every connection of Leveret's
(`_connection.connection_parameters`, 5 s): a broker whose packets are dropped (a firewall,
a dead link) fails as clearly as one that refuses, and soon (pika's defaults waited 10 s,
or 15 s for a slow handshake). Once open, a broker that stops answering is noticed by the
connection's heartbeat, `HEARTBEAT_S` (30 s elsewhere: a dead-letter pass cut off in the
middle waited 70 s for it).
"""

from __future__ import annotations

import contextlib
from types import TracebackType

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from leveret.schemas.errors import BrokerConnectionError, LeveretError, NotFound, OperationError
from leveret.services import config
from leveret.services.observability.redaction import redact
from leveret.services.rabbitmq._connection import (
    OPENING_ERRORS,
    connection_parameters_all,
    describe,
)
from leveret.services.rabbitmq._frames import TolerantSelectConnection

_NOT_FOUND = 404

HEARTBEAT_S = 10
"""The heartbeat of an administrative connection, unless the URL sets ``heartbeat``: a
broker silent for about twice this long closes it (pika checks every heartbeat + 5 s)."""


def admin_parameters(url: str) -> list[pika.URLParameters]:
    """Connection parameters of an administrative connection: opening it is bounded (as
    every connection's), and so is waiting on a broker that stops answering once it is
    open (`HEARTBEAT_S`)."""
    parameters = connection_parameters_all(url, role="admin")
    for one, one_url in zip(parameters, config.broker_urls(url), strict=True):
        if "heartbeat=" not in one_url:
            one.heartbeat = HEARTBEAT_S
    return parameters


class AdminChannel:
    """Context manager: a channel on a new `BlockingConnection`, closed on exit.

    Raises:
        BrokerConnectionError: The broker cannot be reached, or the connection was lost.
        NotFound: The broker said a queue or exchange does not exist.
        OperationError: The broker refused an operation for another reason.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: pika.BlockingConnection | None = None

    def __enter__(self) -> BlockingChannel:
        try:
            self._connection = pika.BlockingConnection(
                admin_parameters(self._url),
                # pika's stubs type this as an instance; pika wants the class.
                _impl_class=TolerantSelectConnection,  # type: ignore[arg-type]
            )
            return self._connection.channel()
        except OPENING_ERRORS as exc:
            raise BrokerConnectionError(
                f"cannot connect to {redact(self._url)}: {describe(exc)}"
            ) from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):  # it is going anyway
                self._connection.close()
        if exc is None or isinstance(exc, LeveretError):
            return
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
            kind = NotFound if exc.reply_code == _NOT_FOUND else OperationError
            raise kind(describe(exc)) from exc
        if isinstance(exc, pika.exceptions.AMQPError):
            raise BrokerConnectionError(
                f"lost the connection to {redact(self._url)}: {describe(exc)}"
            ) from exc


def require_queue(channel: BlockingChannel, queue: str) -> None:
    """Raise `NotFound` unless `queue` exists (checked on a channel of its own).

    Raises:
        NotFound: The queue does not exist (the actor was never declared).
    """
    try:
        channel.connection.channel().queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise NotFound(f"no queue {queue!r} on the broker ({exc.reply_text})") from exc


def message_count(url: str, queue: str) -> int:
    """Messages ready in a queue (full name), as the broker counts them.

    Raises:
        NotFound: No such queue.
        BrokerConnectionError: The broker cannot be reached.
    """
    with AdminChannel(url) as channel:
        require_queue(channel, queue)
        count: int = channel.queue_declare(queue, passive=True).method.message_count
        return count
