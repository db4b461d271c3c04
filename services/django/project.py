"""The project's broker: built from ``settings.LEVERET`` at first use, again when they change.

One `Broker` per process serves every publish of the project (views, commands, handlers).
It is built when first needed, not when Django starts, and from the settings in force
then: ``TEST_BROKER_URL`` while tests run (``memory://`` unless set), ``BROKER_URL``
otherwise. When a test changes ``LEVERET`` (``override_settings``, pytest-django's
``settings``), the next publish uses a broker built from the new values.
"""

from __future__ import annotations

import threading

from leveret.django.hooks import CloseOldConnections
from leveret.django.settings import (
    LeveretSettings,
    broker_url,
    load,
    project_middleware,
)
from leveret.services import config
from leveret.services.broker import Broker
from leveret.services.middleware import Middleware
from leveret.services.transport import RabbitOptions

_lock = threading.Lock()
_built: tuple[tuple[str, str, float, float], Broker] | None = None


def project_broker() -> Broker:
    """The process's broker for the settings in force (built now if they changed)."""
    global _built
    found = load()
    url = broker_url(found)
    key = (url, found.namespace, found.confirm_timeout_s, found.connect_timeout_s)
    built = _built
    if built is not None and built[0] == key:
        return built[1]
    with _lock:
        built = _built
        if built is not None and built[0] == key:
            return built[1]
        broker = new_broker(found, url=url)
        _built = (key, broker)
    if built is not None:
        built[1].close()
    return broker


def forget_project_broker(*, memory_only: bool = False) -> None:
    """Close the process's broker; the next publish builds a new one (fresh queues on
    ``memory://``: each test starts empty).

    Args:
        memory_only: Only an in-memory broker (keep a RabbitMQ connection).
    """
    global _built
    with _lock:
        built = _built
        if built is None or (memory_only and config.scheme(built[0][0]) != "memory"):
            return
        _built = None
    built[1].close()


def new_broker(
    found: LeveretSettings | None = None,
    *,
    url: str | None = None,
    namespace: str | None = None,
) -> Broker:
    """A new `Broker` as the settings say (URL in force, namespace, timeouts, middleware).

    Its middleware: the project's own (``LEVERET["MIDDLEWARE"]``); the worker command's
    broker runs `CloseOldConnections` before them (`worker_middleware`).

    Args:
        found: The settings (read now if None).
        url: Instead of the URL in force.
        namespace: Instead of the settings' namespace.

    Raises:
        ConfigurationError: A ``MIDDLEWARE`` entry that does not import (``check`` says so
            first, as ``leveret.E004``).
    """
    found = found or load()
    url = url or broker_url(found)
    namespace = namespace or found.namespace
    # Not `CloseOldConnections`: the worker command adds it to the broker it runs; here a
    # `join` (tests, eager mode) runs handlers inside the caller's transaction, which
    # closing the connection would end.
    middleware = project_middleware(found)
    if config.scheme(url) == "memory":
        # A MemoryBroker, so that a test can `join` the project's broker; it relays the
        # outbox like the relay would.
        from leveret.django.memory import attach
        from leveret.services.testing import MemoryBroker

        return attach(MemoryBroker(url, namespace=namespace, middleware=middleware))
    options = RabbitOptions(
        confirm_timeout_s=found.confirm_timeout_s, connect_timeout_s=found.connect_timeout_s
    )
    return Broker(url, namespace=namespace, options=options, middleware=middleware)


def worker_middleware(found: LeveretSettings | None = None) -> list[Middleware]:
    """What a Django worker runs around each message: `CloseOldConnections`, then the
    project's ``LEVERET["MIDDLEWARE"]``.

    Raises:
        ConfigurationError: A ``MIDDLEWARE`` entry that does not import.
    """
    return [CloseOldConnections(), *project_middleware(found)]


def command_broker() -> Broker:
    """The broker an operator command uses: a new connection of its own, or, on
    ``memory://`` (whose queues live in this process), the project's broker itself."""
    found = load()
    if config.scheme(broker_url(found)) == "memory":
        return project_broker()
    return new_broker(found)
