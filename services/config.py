"""Where Leveret's settings come from: explicit arguments, then the environment."""

from __future__ import annotations

import os

from services.naming import DEFAULT_NAMESPACE

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/"
BROKER_URL_ENV = "LEVERET_BROKER_URL"
NAMESPACE_ENV = "LEVERET_NAMESPACE"


def broker_url(explicit: str | None = None) -> str:
    """The broker URL: `explicit`, else ``$LEVERET_BROKER_URL``, else the local RabbitMQ."""
    return explicit or os.environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL


def namespace(explicit: str | None = None) -> str:
    """The namespace: `explicit`, else ``$LEVERET_NAMESPACE``, else ``leveret``."""
    return explicit or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
