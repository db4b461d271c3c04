"""Function actors: the seed's three steps (put it in a module, decorate it, call `.send`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar, Unpack, overload

from leveret.actors import dispatch
from leveret.actors.actor import Actor, Handler, QueueType, inspect_handler
from leveret.actors.dispatch import AskArgs, PublishArgs
from leveret.actors.retry import RetryPolicy
from leveret.schemas.errors import InvalidArgument
from leveret.schemas.message import Message

R = TypeVar("R")
_MARK = "__leveret_handler__"


class FunctionActor(Generic[R]):
    """A plain function turned into an actor by `@actor`.

    Calling it runs the function directly (handy in tests); `.send(msg)` delivers the message
    to the actor's queue for a worker to handle.

    Attributes:
        fn: The decorated function.
        actor_class: The generated `Actor` subclass the worker runs.
    """

    def __init__(self, fn: Callable[..., R], actor_class: type[Actor]) -> None:
        self.fn = fn
        self.actor_class = actor_class
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__doc__ = fn.__doc__

    @property
    def queue(self) -> str:
        """The actor's queue name, without namespace."""
        return self.actor_class.queue

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def send(self, message: Message, **options: Unpack[PublishArgs]) -> str:
        """Deliver `message` to this actor's queue (the seed's `.delay()`); see `Actor.send`.

        Args:
            message: A message of the function's message type.
            **options: `PublishArgs`, as for `Actor.send`.

        Returns:
            The message id.

        Raises:
            NotHandled: The message is not of the function's message type.
            ConfigurationError: No broker is configured in this process.
            PublishError: The broker did not confirm the message, or the queue is missing.
            InvalidArgument: An invalid option (see `PublishArgs`).
        """
        self.actor_class.handler_for(message)
        return dispatch.current().send(self, message, **dispatch.carried(options))

    async def send_async(self, message: Message, **options: Unpack[PublishArgs]) -> str:
        """`send`, awaited: waits for the confirm without blocking the event loop."""
        self.actor_class.handler_for(message)
        return await dispatch.send_async(self, message, **options)

    def ask(self, message: Message, **options: Unpack[AskArgs]) -> R:
        """Ask this actor and wait for its answer (`Actor.ask`): the function's return
        annotation is its reply type."""
        self.actor_class.reply_handler_for(message)
        answer: R = dispatch.asker().ask(self, message, **dispatch.ask_options(options))
        return answer

    async def ask_async(self, message: Message, **options: Unpack[AskArgs]) -> R:
        """`ask`, awaited (`Actor.ask_async`)."""
        self.actor_class.reply_handler_for(message)
        options = dispatch.ask_options(options)
        answer: R = await dispatch.asker().ask_async(self, message, **options)
        return answer

    def __repr__(self) -> str:
        return f"<function actor {self.__module__}.{self.__qualname__} queue={self.queue!r}>"


@overload
def actor(fn: Callable[..., R], /) -> FunctionActor[R]: ...


@overload
def actor(
    *,
    queue: str | None = None,
    queue_type: QueueType | None = None,
    delivery_limit: int | None = None,
    time_limit_s: float | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[Callable[..., R]], FunctionActor[R]]: ...


def actor(
    fn: Callable[..., R] | None = None,
    /,
    *,
    queue: str | None = None,
    queue_type: QueueType | None = None,
    delivery_limit: int | None = None,
    time_limit_s: float | None = None,
    retry: RetryPolicy | None = None,
) -> FunctionActor[R] | Callable[[Callable[..., R]], FunctionActor[R]]:
    """Turn a function taking one typed message into an actor.

    ```python
    @actor(queue="emails")
    def send_welcome(msg: UserSignedUp) -> None: ...

    send_welcome.send(UserSignedUp(email="a@example.com"))
    ```

    Args:
        fn: The function (``def`` or ``async def``); its first parameter is hinted with a
            `Message` subclass, an optional second one with `Context` (`AsyncContext` for
            an ``async def``).
        queue: Queue name; defaults to the function's name.
        queue_type: ``"quorum"`` (default) or ``"classic"``.
        delivery_limit: Deliveries before a message that kills its worker is dead-lettered.
        time_limit_s: Seconds the handler may run.
        retry: Retry policy (default: the `Actor` default, 5 attempts with backoff).

    Raises:
        DefinitionError: The function's signature or an option is invalid.
    """
    caller = sys._getframe(1)

    def wrap(function: Callable[..., R]) -> FunctionActor[R]:
        localns = dict(caller.f_locals)
        spec = inspect_handler(function, owner=None, localns=localns)

        def run(self: Actor, *args: Any) -> Any:
            return function(*args)  # an async function's coroutine, for the worker to await

        run.__name__ = function.__name__
        setattr(
            run,
            _MARK,
            Handler(
                name=function.__name__,
                function=run,
                message_type=spec.message_type,
                takes_context=spec.takes_context,
                is_async=spec.is_async,
                reply_type=spec.reply_type,
            ),
        )
        namespace: dict[str, Any] = {
            "__module__": function.__module__,
            "__qualname__": function.__qualname__,
            "__doc__": function.__doc__,
            function.__name__: run,
        }
        if time_limit_s is not None:
            namespace["time_limit_s"] = time_limit_s
        if retry is not None:
            namespace["retry"] = retry
        options: dict[str, Any] = {"queue": queue if queue is not None else function.__name__}
        if queue_type is not None:
            options["queue_type"] = queue_type
        if delivery_limit is not None:
            options["delivery_limit"] = delivery_limit
        actor_class = type(function.__name__, (Actor,), namespace, **options)
        return FunctionActor(function, actor_class)

    if fn is not None:
        return wrap(fn)
    return wrap


def as_actor_class(ref: type[Actor] | FunctionActor[Any]) -> type[Actor]:
    """The `Actor` class behind an actor reference (a class or a function actor)."""
    if isinstance(ref, FunctionActor):
        return ref.actor_class
    if isinstance(ref, type) and issubclass(ref, Actor) and not ref.abstract:
        return ref
    raise InvalidArgument(f"{ref!r} is not an actor (an Actor subclass or an @actor function)")
