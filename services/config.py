"""Where Leveret's settings come from: explicit arguments, then the environment."""

from __future__ import annotations

import os

from leveret.schemas.errors import ConfigurationError
from leveret.services.naming import DEFAULT_NAMESPACE
from leveret.services.redaction import redact

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/"
BROKER_URL_ENV = "LEVERET_BROKER_URL"
NAMESPACE_ENV = "LEVERET_NAMESPACE"


def broker_url(explicit: str | None = None) -> str:
    """The broker URL: `explicit`, else ``$LEVERET_BROKER_URL``, else the local RabbitMQ."""
    return explicit or os.environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL


def namespace(explicit: str | None = None) -> str:
    """The namespace: `explicit`, else ``$LEVERET_NAMESPACE``, else ``leveret``."""
    return explicit or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


SCHEMES = ("amqp", "amqps", "memory")
"""URL schemes Leveret knows: RabbitMQ (plain or TLS) and the in-memory broker."""


def scheme(url: str) -> str:
    """The scheme of a broker URL, lower-cased: ``amqp``, ``amqps`` or ``memory``.

    The one place a broker URL's scheme is read.

    Raises:
        ConfigurationError: The URL has another scheme, or none.
    """
    found = url.split("://", 1)[0].lower() if "://" in url else ""
    if found not in SCHEMES:
        raise ConfigurationError(
            f"unknown broker URL scheme in {redact(url)!r}: use amqp://, amqps:// or memory://"
        )
    return found
