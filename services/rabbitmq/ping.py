"""`leveret ping`: does the broker answer? An AMQP handshake, login included, then close."""

from __future__ import annotations

import contextlib
import time
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

from leveret.schemas.errors import BrokerConnectionError
from leveret.services import config
from leveret.services.redaction import redact as redact_url


def ping_broker(url: str, timeout_s: float = 5.0) -> float:
    """Open an AMQP connection to `url` (the whole handshake, login included), then close it.

    Of several URLs (a cluster's nodes, commas between them) each is tried in turn until
    one answers, as Leveret's own connections do.

    Args:
        url: ``amqp://`` or ``amqps://`` URL, or several.
        timeout_s: Limit for the TCP connect, the handshake and each read (per node).

    Returns:
        How long the handshake took, in seconds.

    Raises:
        BrokerConnectionError: No node can be reached or each refused the login; the
            message holds no password and says why for each node.
    """
    errors = []
    for one in config.broker_urls(url):
        try:
            return _ping_one(one, timeout_s)
        except BrokerConnectionError as exc:
            errors.append(str(exc))
    raise BrokerConnectionError("; ".join(errors))


def _ping_one(url: str, timeout_s: float) -> float:
    try:
        params = pika.URLParameters(url)
    except ValueError as exc:
        raise BrokerConnectionError(f"invalid broker URL {redact_url(url)}: {exc}") from None
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = timeout_s
    params.stack_timeout = timeout_s
    params.blocked_connection_timeout = timeout_s
    params.client_properties = {"connection_name": "leveret ping", "product": "leveret"}
    started = time.monotonic()
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as exc:
        reason = _one_line(_root_cause(exc), url)
        raise BrokerConnectionError(f"cannot connect to {redact_url(url)}: {reason}") from exc
    except OSError as exc:  # e.g. the host name does not resolve
        reason = _one_line(exc, url)
        raise BrokerConnectionError(f"cannot connect to {redact_url(url)}: {reason}") from exc
    elapsed = time.monotonic() - started
    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
        connection.close()
    return elapsed


def _root_cause(error: BaseException) -> BaseException:
    # pika wraps the real reason (refused, timeout, ACCESS_REFUSED) in workflow errors.
    for _ in range(10):
        inner = getattr(error, "exceptions", None) or [
            arg
            for arg in (getattr(error, "exception", None), *error.args)
            if isinstance(arg, BaseException)
        ]
        if not inner:
            break
        error = inner[-1]
    return error


def _one_line(error: BaseException, url: str) -> str:
    text = " ".join((str(error) or type(error).__name__).split())
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    return f"{type(error).__name__}: {text}"


def _password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None
