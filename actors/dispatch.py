"""Which broker `Actor.send` and `publish` use: the one this process configured.

Actors are plain declarations; nothing is bound at import time. The worker, the Django app
or a test fixture calls `configure(broker)`, and every send looks the broker up at call time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from leveret.actors.handling import current_correlation_id
from leveret.schemas.errors import ConfigurationError
from leveret.schemas.message import Message

if TYPE_CHECKING:
    from leveret.actors.actor import ActorRef

Delay: TypeAlias = "float | timedelta | None"
"""A delay in seconds or as a `timedelta`; None for none."""


class Dispatcher(Protocol):
    """What actors need from a broker: publish by topic and send to one actor."""

    def publish(
        self,
        message: Message,
        *,
        delay: Delay = None,
        eta: datetime | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Publish to every actor bound to the message's topic; return its message id."""
        ...

    def send(
        self,
        actor: ActorRef,
        message: Message,
        *,
        delay: Delay = None,
        eta: datetime | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Deliver to one actor's queue; return the message id."""
        ...


_lock = threading.Lock()
_current: Dispatcher | None = None
_adapter: Callable[[Dispatcher], Dispatcher] | None = None


def configure(dispatcher: Dispatcher | None) -> None:
    """Make `dispatcher` the broker of this process (None forgets it).

    In a Django project (``leveret.django`` installed) a `Broker` configured here is
    wrapped so that it follows Django's transactions, as in production (see `adapt_with`).

    Args:
        dispatcher: Usually a `leveret.services.Broker`.
    """
    global _current
    with _lock:
        if dispatcher is not None and _adapter is not None:
            dispatcher = _adapter(dispatcher)
        _current = dispatcher


def adapt_with(adapter: Callable[[Dispatcher], Dispatcher] | None) -> None:
    """Pass every dispatcher configured from now on through `adapter` (None: no longer).

    The Django app uses it so that any broker a test configures (`memory_broker`)
    publishes after commit like the project's own. An adapter must return what it does not
    adapt unchanged, and adapting twice must change nothing more.
    """
    global _adapter
    with _lock:
        _adapter = adapter


def current() -> Dispatcher:
    """The broker this process configured.

    Raises:
        ConfigurationError: Nothing was configured yet.
    """
    dispatcher = _current
    if dispatcher is None:
        raise ConfigurationError(
            "no broker is configured in this process: call "
            "leveret.configure(Broker(url, namespace=...)) at start-up (the worker and the "
            "Django app do this for you; tests use the leveret_broker pytest fixture or "
            "leveret.services.testing.memory_broker)"
        )
    return dispatcher


def publish(
    message: Message,
    *,
    delay: Delay = None,
    eta: datetime | None = None,
    timeout: float | None = None,
) -> str:
    """Publish `message` to every actor bound to its topic, through the configured broker.

    Inside a handler the correlation id of the message being handled is carried on.

    Args:
        message: The message.
        delay: Deliver after this long (seconds or `timedelta`), waiting in the broker.
        eta: Deliver at this timezone-aware time instead.
        timeout: Seconds to wait for the broker's confirm, instead of the broker's
            default (30 s): a request path may want 2.

    Returns:
        The new message's id.

    Raises:
        ConfigurationError: No broker is configured.
        PublishError: The broker did not confirm the message.
        InvalidArgument: An invalid delay, eta or timeout, or a correlation id over 255
            bytes.
    """
    return current().publish(
        message, delay=delay, eta=eta, correlation_id=current_correlation_id(), timeout=timeout
    )


async def publish_async(
    message: Message,
    *,
    delay: Delay = None,
    eta: datetime | None = None,
    timeout: float | None = None,
    correlation_id: str | None = None,
) -> str:
    """`publish`, awaited: waits for the broker's confirm without blocking the event loop.

    For ``async def`` handlers and other asyncio code (a FastAPI or ASGI Django view).
    Inside a handler the correlation id of the message being handled is carried on.

    Args:
        message: The message.
        delay: Deliver after this long (seconds or `timedelta`), waiting in the broker.
        eta: Deliver at this timezone-aware time instead.
        timeout: Seconds to wait for the broker's confirm (default: the broker's, 30 s).
        correlation_id: Carried on instead of the handled message's.

    Returns:
        The new message's id.

    Raises:
        ConfigurationError: No broker is configured.
        PublishError: The broker did not confirm the message.
        InvalidArgument: An invalid delay, eta or timeout, or a correlation id over 255
            bytes.
    """
    return await _dispatch_async(
        "publish", message, delay=delay, eta=eta, timeout=timeout, correlation_id=correlation_id
    )


async def send_async(
    actor: ActorRef,
    message: Message,
    *,
    delay: Delay = None,
    eta: datetime | None = None,
    timeout: float | None = None,
    correlation_id: str | None = None,
) -> str:
    """`Actor.send`, awaited: waits for the confirm without blocking the event loop.

    Args:
        actor: The actor (class or `@actor` function).
        message: A message one of its handlers takes.
        delay: Deliver after this long (seconds or `timedelta`), waiting in the broker.
        eta: Deliver at this timezone-aware time instead.
        timeout: Seconds to wait for the broker's confirm (default: the broker's, 30 s).
        correlation_id: Carried on instead of the handled message's.

    Returns:
        The message id.

    Raises:
        NotHandled: No handler of the actor takes the message's type.
        ConfigurationError: No broker is configured.
        PublishError: The broker did not confirm the message, or the queue is missing.
        InvalidArgument: An invalid delay, eta or timeout, or a correlation id over 255
            bytes.
    """
    return await _dispatch_async(
        "send",
        actor,
        message,
        delay=delay,
        eta=eta,
        timeout=timeout,
        correlation_id=correlation_id,
    )


async def _dispatch_async(
    operation: str,
    *args: Any,
    delay: Delay,
    eta: datetime | None,
    timeout: float | None,
    correlation_id: str | None,
) -> str:
    """`operation` (publish or send) on the configured dispatcher, awaited: its own async
    method when it has one, else its blocking one in a thread (Django's transactional
    dispatcher)."""
    dispatcher = current()
    options = {
        "delay": delay,
        "eta": eta,
        "timeout": timeout,
        "correlation_id": (
            correlation_id if correlation_id is not None else current_correlation_id()
        ),
    }
    native = getattr(dispatcher, f"{operation}_async", None)
    if native is None:
        blocking = getattr(dispatcher, operation)
        result: str = await asyncio.to_thread(blocking, *args, **options)
        return result
    awaited: str = await native(*args, **options)
    return awaited
