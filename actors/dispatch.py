"""Which broker `Actor.send` and `publish` use: the one this process configured.

Actors are plain declarations; nothing is bound at import time. The worker, the Django app
or a test fixture calls `configure(broker)`, and every send looks the broker up at call time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypedDict, TypeVar, Unpack

from leveret.actors.handling import current_correlation_id, time_left
from leveret.schemas.errors import AskTimeout, ConfigurationError
from leveret.schemas.message import Message

if TYPE_CHECKING:
    from leveret.actors.actor import ActorRef

Delay: TypeAlias = "float | timedelta | None"
"""A delay in seconds or as a `timedelta`; None for none."""


class PublishArgs(TypedDict, total=False):
    """The keyword arguments every publish and send takes, all optional.

    `Broker.publish`, `publish_many`, `send` and their async forms, `Actor.send`,
    ``ctx.publish``/``ctx.send``, `leveret.publish` and Django's `publish`/`send` all take
    these, and check them once, before anything is built or sent.

    Attributes:
        delay: Deliver after this long: seconds or a `timedelta` (rounded up to whole
            seconds, at most 2^28 - 1 s). The message waits in the broker (on RabbitMQ, in
            its delay levels), not in a worker.
        eta: Deliver at this timezone-aware time instead.
        correlation_id: Carried by the message, to tie it to what caused it; by default,
            inside a handler, the correlation id of the message being handled.
        timeout: Seconds to wait for the broker's confirm, instead of the broker's default
            (``confirm_timeout_s``, 30 s): a request path may want 2.

    The call that takes them raises `InvalidArgument` for both delay and eta, a negative or
    too long delay, a naive eta, a timeout that is not a positive number of seconds, or a
    correlation id over 255 bytes; and `TypeError` for a keyword argument not listed here.
    """

    delay: Delay
    eta: datetime | None
    correlation_id: str | None
    timeout: float | None


DEFAULT_ASK_TIMEOUT_S = 10.0
"""How long an ask waits for its answer when no timeout is given."""
MAX_ASK_TIMEOUT_S = 86_400.0
"""The longest an ask may wait (a day); a worker reads a deadline further ahead as none."""


class AskArgs(TypedDict, total=False):
    """The keyword arguments of every ask (`Actor.ask`, `Broker.ask`, ``ctx.ask``, their
    async forms and `Broker.ask_all`), all optional.

    Attributes:
        timeout: Seconds to wait for the answer (10 by default); the request carries its
            deadline, and a worker that takes it later drops it unhandled. Inside a
            handler answering an ask, never past that ask's own deadline.
        correlation_id: As for `PublishArgs`; inside a handler, the handled message's by
            default.

    The call raises `InvalidArgument` for a timeout that is not a positive number of
    seconds or a correlation id over 255 bytes, and `TypeError` for another keyword.
    """

    timeout: float | None
    correlation_id: str | None


Options = TypeVar("Options", PublishArgs, AskArgs)


class Dispatcher(Protocol):
    """What actors need from a broker: publish by topic and send to one actor."""

    def publish(self, message: Message, **options: Unpack[PublishArgs]) -> str:
        """Publish to every actor bound to the message's topic; return its message id."""
        ...

    def send(self, actor: ActorRef, message: Message, **options: Unpack[PublishArgs]) -> str:
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

    Internal to Leveret's Django app, which uses it so that any broker a test configures
    (`memory_broker`) publishes after commit like the project's own. Not an extension point:
    middleware observes publishing, while this decides when (or whether) a message goes
    out. An adapter must return what it does not adapt unchanged, and adapting twice must
    change nothing more.
    """
    global _adapter
    with _lock:
        _adapter = adapter


def configured() -> Dispatcher | None:
    """The broker this process configured, or None (`current` raises instead)."""
    return _current


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


def carried(options: Options, correlation_id: str | None = None) -> Options:
    """`options`, with `correlation_id` (by default the handled message's, inside a
    handler) unless they name one."""
    if options.get("correlation_id") is None:
        options["correlation_id"] = (
            correlation_id if correlation_id is not None else current_correlation_id()
        )
    return options


def ask_options(options: AskArgs) -> AskArgs:
    """`options` for an ask made now: the correlation id carried on (`carried`) and, inside
    a handler answering an ask, the timeout cut to what is left of that ask's deadline.

    Raises:
        AskTimeout: That deadline has passed already.
    """
    options = carried(options)
    left_s = time_left()
    if left_s is None or left_s > MAX_ASK_TIMEOUT_S:  # none, or one no ask may have
        return options
    if left_s <= 0:
        raise AskTimeout(
            "the ask being answered is past its deadline: no time is left to ask another actor"
        )
    timeout = options.get("timeout")
    if timeout is None:
        options["timeout"] = min(DEFAULT_ASK_TIMEOUT_S, left_s)
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > left_s:
        options["timeout"] = left_s  # an invalid one is the broker's to refuse
    return options


def asker() -> Any:
    """The configured broker, for an ask (the Django app's dispatcher passes asks on).

    Raises:
        ConfigurationError: Nothing configured, or a dispatcher that cannot ask.
    """
    dispatcher = current()
    if not callable(getattr(dispatcher, "ask", None)):
        raise ConfigurationError(
            f"the configured dispatcher {type(dispatcher).__name__} cannot ask: configure a "
            "leveret Broker (leveret.configure(Broker(...)))"
        )
    return dispatcher


def publish(message: Message, **options: Unpack[PublishArgs]) -> str:
    """Publish `message` to every actor bound to its topic, through the configured broker.

    Args:
        message: The message.
        **options: `PublishArgs`: delay or eta, correlation id (inside a handler, the
            handled message's by default), confirm timeout.

    Returns:
        The new message's id.

    Raises:
        ConfigurationError: No broker is configured.
        PublishError: The broker did not confirm the message.
        InvalidArgument: An invalid option (see `PublishArgs`).
    """
    return current().publish(message, **carried(options))


async def publish_async(message: Message, **options: Unpack[PublishArgs]) -> str:
    """`publish`, awaited: waits for the broker's confirm without blocking the event loop.

    For ``async def`` handlers and other asyncio code (a FastAPI or ASGI Django view);
    arguments, result and errors are `publish`'s.
    """
    return await _awaited("publish", message, options=options)


async def send_async(actor: ActorRef, message: Message, **options: Unpack[PublishArgs]) -> str:
    """`Actor.send`, awaited: waits for the confirm without blocking the event loop.

    Arguments, result and errors are `Broker.send`'s (and `ConfigurationError` when no
    broker is configured); inside a handler the handled message's correlation id is
    carried on.
    """
    return await _awaited("send", actor, message, options=options)


async def _awaited(operation: str, *args: object, options: PublishArgs) -> str:
    """`operation` (publish or send) on the configured dispatcher, awaited: its own async
    method when it has one, else its blocking one in a thread (Django's transactional
    dispatcher)."""
    dispatcher, options = current(), carried(options)
    native = getattr(dispatcher, f"{operation}_async", None)
    if native is None:
        blocking: Callable[..., str] = getattr(dispatcher, operation)
        return await asyncio.to_thread(blocking, *args, **options)
    awaited: str = await native(*args, **options)
    return awaited
