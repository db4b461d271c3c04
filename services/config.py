"""Where Leveret's settings come from: explicit arguments, then the environment."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from leveret.schemas.errors import ConfigurationError
from leveret.services.observability.redaction import redact
from leveret.services.topology.naming import DEFAULT_NAMESPACE

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/"
BROKER_URL_ENV = "LEVERET_BROKER_URL"
NAMESPACE_ENV = "LEVERET_NAMESPACE"
DASHBOARD_TOKEN_ENV = "LEVERET_DASHBOARD_TOKEN"  # noqa: S105  # the name of a variable
WORKER_SLOT_ENV = "LEVERET_WORKER_SLOT"
"""A child of ``leveret worker --processes N``: its slot number (0 … N-1), set by the
supervisor; its log lines and metrics carry it."""
DEFAULT_CONNECT_TIMEOUT_S = 5.0
"""How long one connection attempt to one node may take (TCP connect, TLS and the AMQP
handshake), unless the URL says otherwise (``socket_timeout``, ``stack_timeout``); for a
publisher, also how long a publish waits for a broker that cannot be reached."""


def positive_seconds(value: object) -> bool:
    """Whether `value` is a number of seconds a wait can take: positive and finite (a bool
    is not a number here)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value > 0
    )


def broker_url(explicit: str | Sequence[str] | None = None) -> str:
    """The broker URL: `explicit`, else ``$LEVERET_BROKER_URL``, else the local RabbitMQ.

    Several URLs (the nodes of a RabbitMQ cluster) come as a list or as one string with
    commas between them; either way the result is the one string, commas between URLs.

    Raises:
        ConfigurationError: `explicit` is an empty list, or a list holding something other
            than non-empty strings.
    """
    if explicit is not None and not isinstance(explicit, str):
        if (
            isinstance(explicit, Sequence)
            and explicit
            and all(isinstance(one, str) and one.strip() for one in explicit)
        ):
            return ",".join(one.strip() for one in explicit)
        raise ConfigurationError(
            "the broker URL must be a string or a non-empty list of URL strings, "
            f"not {type(explicit).__name__} {redact(str(explicit))!r}"
        )
    return explicit or os.environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL


# A comma separates two URLs only where a scheme, another comma or the end follows it: a
# password may hold commas (but not ",," nor ",scheme://").
_NEXT_URL = re.compile(r",(?=\s*(?:,|$|[A-Za-z][A-Za-z0-9+.\-]*://))")


def broker_urls(url: str) -> list[str]:
    """The URLs of a broker URL setting: one, or several with commas between them (a
    cluster's nodes, tried in turn).

    Raises:
        ConfigurationError: An empty URL, or one of an unknown scheme; several URLs that
            are not all ``amqp://`` or ``amqps://``.
    """
    urls = [one.strip() for one in _NEXT_URL.split(url.strip())]
    if not all(urls):
        raise ConfigurationError(
            f"empty broker URL in {redact(url)!r}: give one URL, or several with one comma "
            "between two"
        )
    kinds = {_scheme_of_one(one) for one in urls}
    if len(urls) > 1 and "memory" in kinds:
        raise ConfigurationError(
            f"memory:// cannot be one of several broker URLs ({redact(url)!r}): "
            "give several URLs only for the nodes of a RabbitMQ cluster"
        )
    return urls


def namespace(explicit: str | None = None) -> str:
    """The namespace: `explicit`, else ``$LEVERET_NAMESPACE``, else ``leveret``."""
    return explicit or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


SCHEMES = ("amqp", "amqps", "memory")
"""URL schemes Leveret knows: RabbitMQ (plain or TLS) and the in-memory broker."""


def scheme(url: str) -> str:
    """The scheme of a broker URL, lower-cased: ``amqp``, ``amqps`` or ``memory``.

    The one place a broker URL's scheme is read. Of several URLs (a cluster's nodes), the
    first one's (``amqp`` and ``amqps`` may be mixed).

    Raises:
        ConfigurationError: A URL has another scheme, or none, or is empty; or memory:// is
            one of several.
    """
    return _scheme_of_one(broker_urls(url)[0])


def _scheme_of_one(url: str) -> str:
    found = url.split("://", 1)[0].lower() if "://" in url else ""
    if found not in SCHEMES:
        raise ConfigurationError(
            f"unknown broker URL scheme in {redact(url)!r}: use amqp://, amqps:// or memory://"
        )
    return found
