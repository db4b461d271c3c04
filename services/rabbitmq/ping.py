"""`leveret ping`: does the broker answer? An AMQP handshake, login included, then close."""

from __future__ import annotations

import contextlib
import time
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

from leveret.schemas.errors import BrokerConnectionError
from leveret.services import config
from leveret.services.observability.redaction import redact as redact_url
from leveret.services.rabbitmq._connection import OPENING_ERRORS, innermost


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
    nodes = config.broker_urls(url)
    for one in nodes:
        try:
            return _ping_one(one, timeout_s)
        except _NodeFailed as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise BrokerConnectionError(f"{errors[0].what} {errors[0].url}: {errors[0].reason}")
    # One URL after another with a comma between them, as in a broker URL setting: redacted
    # again (when logged), each node keeps its own reason.
    raise BrokerConnectionError(
        "cannot connect to any node: "
        + ", ".join(f"{error.url} ({error.what}: {error.reason})" for error in errors)
    )


class _NodeFailed(Exception):
    """One node could not be pinged: the URL (redacted), what failed, why."""

    def __init__(self, url: str, what: str, reason: str) -> None:
        super().__init__(url, what, reason)
        self.url = redact_url(url)
        self.what = what
        self.reason = reason


def _ping_one(url: str, timeout_s: float) -> float:
    try:
        params = pika.URLParameters(url)
    except ValueError as exc:
        # The parser's message may quote a piece of the password ("Port could not be cast
        # to integer value as 'pass'"): said only when the URL has none.
        reason = (
            "its host, port or vhost cannot be read (percent-encode a '/', '#' or '?' in "
            "the user name or password)"
            if _has_password(url)
            else _one_line(exc, url)
        )
        raise _NodeFailed(url, "invalid broker URL", reason) from None
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = timeout_s
    params.stack_timeout = timeout_s
    params.blocked_connection_timeout = timeout_s
    params.client_properties = {"connection_name": "leveret ping", "product": "leveret"}
    started = time.monotonic()
    try:
        connection = pika.BlockingConnection(params)
    except OPENING_ERRORS as exc:  # pika wraps the real reason (refused, timeout, login)
        raise _NodeFailed(url, "cannot connect to", _one_line(innermost(exc), url)) from exc
    except OSError as exc:  # e.g. the host name does not resolve
        raise _NodeFailed(url, "cannot connect to", _one_line(exc, url)) from exc
    elapsed = time.monotonic() - started
    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
        connection.close()
    return elapsed


def _one_line(error: BaseException, url: str) -> str:
    text = str(error) or type(error).__name__
    for password in _passwords(url):  # before spaces are squeezed: the password may hold some
        text = text.replace(password, "***")
    return f"{type(error).__name__}: {redact_url(' '.join(text.split()))}"


def _passwords(url: str) -> list[str]:
    """The password of `url` as written and as decoded (longest first), if it has one."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return sorted({password, unquote(password)} - {""}, key=len, reverse=True) if password else []


def _has_password(url: str) -> bool:
    return redact_url(url) != url
