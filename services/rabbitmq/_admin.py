"""Internal: short-lived blocking channels for administrative work, pika errors translated.

Counting, deleting, purging and the dead-letter passes run on a `BlockingConnection` of
their own. Whatever pika raises on the way is translated into Leveret's errors here, at the
boundary: a connection that fails is `BrokerConnectionError`, a queue that does not exist
`NotFound`, any other refusal by the broker `OperationError`.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from leveret.schemas.errors import BrokerConnectionError, LeveretError, NotFound, OperationError
from leveret.services.rabbitmq._connection import connection_parameters_all, describe
from leveret.services.rabbitmq._frames import TolerantSelectConnection
from leveret.services.redaction import redact

_NOT_FOUND = 404


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
                connection_parameters_all(self._url, role="admin"),
                # pika's stubs type this as an instance; pika wants the class.
                _impl_class=TolerantSelectConnection,  # type: ignore[arg-type]
            )
            return self._connection.channel()
        except pika.exceptions.AMQPError as exc:
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
