"""The `Actor` base class and the `@handler` decorator."""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType, MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias, TypeVar, Unpack, overload

from leveret.actors import dispatch
from leveret.actors.checks import is_count
from leveret.actors.context import AsyncContext, Context
from leveret.actors.dispatch import AskArgs, PublishArgs
from leveret.actors.retry import RetryPolicy
from leveret.schemas.casing import snake_case
from leveret.schemas.errors import DefinitionError, NotHandled
from leveret.schemas.message import Message

if TYPE_CHECKING:
    from leveret.actors.function import FunctionActor

QueueType = Literal["quorum", "classic"]
ActorRef: TypeAlias = "type[Actor] | FunctionActor[Any]"

F = TypeVar("F", bound=Callable[..., Any])

_QUEUE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
SHORT_STRING_BYTES = 255
"""AMQP's limit on names, routing and binding keys (short strings), in bytes."""
DELAY_KEY_PREFIX_BYTES = 58
"""What precedes the queue name in a delayed message's routing key and in the queue's
delay binding key: 28 delay bits or stars and ``q.`` (see `leveret.services.topology.delays`)."""
MAX_QUEUE_BYTES = SHORT_STRING_BYTES - DELAY_KEY_PREFIX_BYTES
"""The longest queue name (without namespace) on its own: its delay binding key must fit
AMQP's 255 bytes. The names that also hold the namespace (the queue, its ``.dlq`` and that
one's lock) are checked where the namespace is known
(`leveret.services.topology.naming.check_queue`)."""
_MARK = "__leveret_handler__"


@dataclass(frozen=True, slots=True)
class Handler:
    """One handler of an actor: the function and the message type it is bound to.

    Attributes:
        name: The method's (or function's) name.
        function: The function to call: ``function(instance, message[, ctx])``.
        message_type: The `Message` subclass of the handler's message parameter.
        takes_context: Whether the handler wants a `Context` (an `AsyncContext` when
            async) as its last argument.
        retry: This handler's retry policy, overriding the actor's.
        time_limit_s: Seconds this handler may run, overriding the actor's `time_limit_s`.
        is_async: An ``async def`` handler: calling it returns a coroutine, which the
            worker runs on its event loop.
        reply_type: The `Message` class it answers asks with, from its return annotation
            (``-> Quote``, or ``-> Quote | None`` for one that may answer with
            ``ctx.reply``); None when it answers nothing.
    """

    name: str
    function: Callable[..., Any]
    message_type: type[Message]
    takes_context: bool
    retry: RetryPolicy | None = None
    time_limit_s: float | None = None
    is_async: bool = False
    reply_type: type[Message] | None = None

    @property
    def topic(self) -> str:
        """The topic this handler binds its actor's queue to."""
        return self.message_type.topic()

    def __call__(self, instance: Actor, message: Message, ctx: Context | AsyncContext) -> Any:
        """Run the handler for one message (an async one returns its coroutine)."""
        if self.takes_context:
            return self.function(instance, message, ctx)
        return self.function(instance, message)


@overload
def handler(function: F, /) -> F: ...


@overload
def handler(
    *, retry: RetryPolicy | None = None, time_limit_s: float | None = None
) -> Callable[[F], F]: ...


def handler(
    function: F | None = None,
    /,
    *,
    retry: RetryPolicy | None = None,
    time_limit_s: float | None = None,
) -> F | Callable[[F], F]:
    """Mark an actor method as the handler of the message type its parameter is hinted with.

    ```python
    class Billing(Actor):
        @handler
        def charge(self, msg: OrderPlaced, ctx: Context) -> None: ...

        @handler(retry=RetryPolicy(attempts=1), time_limit_s=5)
        def refund(self, msg: RefundAsked) -> None: ...
    ```

    The hint of the message parameter binds the actor's queue to that message's topic. A
    second parameter hinted `Context` is optional. ``async def`` handlers run on the
    worker's event loop (`--concurrency` at once); their second parameter, if any, is hinted
    `AsyncContext`, whose `publish` and `send` are awaited.

    Args:
        function: The method (when used without parentheses).
        retry: A retry policy for this handler, instead of the actor's.
        time_limit_s: Seconds this handler may run, instead of the actor's `time_limit_s`;
            past it the handler is interrupted with `TimeLimitExceeded`.

    Raises:
        DefinitionError: `retry` is not a `RetryPolicy`, or `time_limit_s` is not a
            positive number.
    """
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise DefinitionError(f"handler retry= must be a RetryPolicy, not {retry!r}")
    if time_limit_s is not None and not _positive(time_limit_s):
        raise DefinitionError(
            f"handler time_limit_s= must be a positive number of seconds, not {time_limit_s!r}"
        )

    def mark(method: F) -> F:
        setattr(method, _MARK, {"retry": retry, "time_limit_s": time_limit_s})
        return method

    return mark(function) if function is not None else mark


class Actor:
    """Base class of actors: a queue and the handlers that consume it.

    Options are class keywords, checked when the class is created::

        class Billing(Actor, queue="billing", queue_type="quorum", delivery_limit=20): ...

    Args (class keywords):
        queue: Queue name without namespace; defaults to the class name in snake case.
        queue_type: ``"quorum"`` (default; replicated, with a delivery limit) or ``"classic"``.
        delivery_limit: Deliveries after which the broker dead-letters a message that keeps
            killing its worker (quorum queues only).
        abstract: A base class for other actors; it has no queue of its own.

    Class attributes:
        retry: The `RetryPolicy` of every handler that does not set its own (default: 5
            attempts, exponential backoff from 1 s up to 10 min, with jitter).
        time_limit_s: Seconds a handler may run (None: no limit). Past it the handler is
            interrupted with `TimeLimitExceeded` and the retry policy applies; see
            `leveret.services.timelimits`. `@handler(time_limit_s=...)` overrides it per handler.

    One instance per worker process handles every message, from several threads at once:
    keep handlers free of per-message state on ``self``.

    Raises:
        DefinitionError: At class creation, for unknown options, a handler without a typed
            message parameter, or two handlers for one topic.
    """

    queue: ClassVar[str] = ""
    queue_type: ClassVar[QueueType] = "quorum"
    delivery_limit: ClassVar[int] = 20
    time_limit_s: ClassVar[float | None] = None
    retry: ClassVar[RetryPolicy] = RetryPolicy()
    handlers: ClassVar[Mapping[str, Handler]] = MappingProxyType({})
    abstract: ClassVar[bool] = True

    def __init_subclass__(
        cls,
        *,
        queue: str | None = None,
        queue_type: QueueType | None = None,
        delivery_limit: int | None = None,
        abstract: bool = False,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise DefinitionError(
                f"{cls.__qualname__}: unknown actor option(s) {sorted(unknown)}; "
                "known: queue, queue_type, delivery_limit, abstract"
            )
        super().__init_subclass__()
        cls.abstract = abstract
        if queue_type is not None:
            if queue_type not in ("quorum", "classic"):
                raise DefinitionError(
                    f"{cls.__qualname__}: queue_type must be 'quorum' or 'classic', "
                    f"not {queue_type!r}"
                )
            cls.queue_type = queue_type
        if delivery_limit is not None:
            if not is_count(delivery_limit):
                raise DefinitionError(
                    f"{cls.__qualname__}: delivery_limit must be a positive int, "
                    f"not {delivery_limit!r}"
                )
            cls.delivery_limit = delivery_limit
        _check_time_limit(cls)
        if not isinstance(cls.retry, RetryPolicy):
            raise DefinitionError(
                f"{cls.__qualname__}.retry must be a RetryPolicy, not {cls.retry!r}"
            )
        cls.handlers = MappingProxyType(_collect_handlers(cls, _defining_frame()))
        if abstract:
            cls.queue = ""
            return
        cls.queue = queue if queue is not None else snake_case(cls.__name__)
        _check_queue_name(cls)
        if not cls.handlers:
            raise DefinitionError(
                f"{cls.__qualname__} has no @handler method; declare one, or pass "
                "abstract=True for a base class"
            )

    @classmethod
    def topics(cls) -> list[str]:
        """The topics this actor's queue is bound to, sorted."""
        return sorted(cls.handlers)

    @classmethod
    def send(cls, message: Message, **options: Unpack[PublishArgs]) -> str:
        """Deliver `message` to this actor's queue only, through the configured broker.

        Args:
            message: A message one of the actor's handlers takes.
            **options: `PublishArgs`: delay or eta (the message waits in the broker, not
                in a worker), correlation id (inside a handler, the handled message's by
                default), confirm timeout.

        Returns:
            The message id.

        Raises:
            NotHandled: No handler of this actor takes the message's type.
            ConfigurationError: No broker is configured in this process.
            PublishError: The broker did not confirm the message, or the queue does not
                exist (no worker or `leveret declare` created it yet).
            InvalidArgument: An invalid option (see `PublishArgs`).
        """
        cls.handler_for(message)
        return dispatch.current().send(cls, message, **dispatch.carried(options))

    @classmethod
    async def send_async(cls, message: Message, **options: Unpack[PublishArgs]) -> str:
        """`send`, awaited: waits for the confirm without blocking the event loop.

        For ``async def`` handlers and other asyncio code; arguments, result and errors
        are `send`'s.
        """
        cls.handler_for(message)
        return await dispatch.send_async(cls, message, **options)

    @classmethod
    def ask(cls, message: Message, **options: Unpack[AskArgs]) -> Any:
        """Ask this actor and wait for its answer, through the configured broker.

        ```python
        quote = Pricing.ask(QuoteAsked(sku="x"), timeout=2.0)
        ```

        The request goes to this actor's queue with its deadline; a worker's handler
        answers by returning an instance of its reply type (its return annotation) or with
        ``ctx.reply``. Replies come back on RabbitMQ's direct reply-to: no queue per call.

        Args:
            message: A message one of the actor's handlers takes, and answers.
            **options: `AskArgs`: timeout (10 s by default), correlation id.

        Returns:
            The answer: an instance of the handler's reply type, validated.

        Raises:
            NotHandled: No handler of this actor takes the message, or it answers nothing
                (it declares no reply type).
            AskTimeout: No answer by the deadline (no worker, a slow or killed one).
            RemoteError: The actor failed for good (the request was dead-lettered).
            InvalidReply: The answer is not the reply type.
            AskInterrupted: The connection the answer comes on was lost meanwhile.
            BrokerUnavailable: The broker cannot be reached: nothing was sent.
            PublishError: The request was not stored (the actor's queue does not exist).
            InvalidArgument: An invalid option.
        """
        cls.reply_handler_for(message)
        options = dispatch.ask_options(options)
        return dispatch.asker().ask(cls, message, **options)

    @classmethod
    async def ask_async(cls, message: Message, **options: Unpack[AskArgs]) -> Any:
        """`ask`, awaited: the event loop goes on while the answer is awaited (no thread
        waits for it). Arguments, result and errors are `ask`'s."""
        cls.reply_handler_for(message)
        options = dispatch.ask_options(options)
        return await dispatch.asker().ask_async(cls, message, **options)

    @classmethod
    def reply_handler_for(cls, message: Message) -> Handler:
        """The handler that takes `message` and answers it.

        Raises:
            NotHandled: No handler takes the message, or the one that does declares no
                reply type.
        """
        found = cls.handler_for(message)
        if found.reply_type is None:
            raise NotHandled(
                f"actor {cls.__qualname__}: handler {found.name!r} answers no ask; annotate "
                "its return with the Message class it answers with (-> Quote)"
            )
        return found

    @classmethod
    def retry_policy(cls, handler: Handler) -> RetryPolicy:
        """The retry policy that applies to `handler`: its own, else the actor's."""
        return handler.retry if handler.retry is not None else cls.retry

    @classmethod
    def time_limit_for(cls, handler: Handler) -> float | None:
        """Seconds `handler` may run: its own limit, else the actor's (None: no limit)."""
        return handler.time_limit_s if handler.time_limit_s is not None else cls.time_limit_s

    @classmethod
    def handler_for(cls, message: Message) -> Handler:
        """The handler that takes `message`.

        Raises:
            NotHandled: No handler of this actor takes the message's topic.
        """
        found = cls.handlers.get(message.topic())
        if found is None or not isinstance(message, found.message_type):
            raise NotHandled(
                f"actor {cls.__qualname__} has no handler for {type(message).__name__} "
                f"(topic {message.topic()!r}); it handles {cls.topics()}"
            )
        return found


def _check_queue_name(cls: type[Actor]) -> None:
    queue = cls.queue
    if not isinstance(queue, str) or not _QUEUE.match(queue):
        raise DefinitionError(
            f"{cls.__qualname__}: invalid queue name {queue!r}; use dot-separated words of "
            "letters, digits, '_' or '-'"
        )
    key_bytes = DELAY_KEY_PREFIX_BYTES + len(queue.encode())
    over = key_bytes - SHORT_STRING_BYTES
    if over > 0:
        raise DefinitionError(
            f"{cls.__qualname__}: queue name {queue[:40]!r}… is {len(queue.encode())} bytes: "
            f"its delay binding key ('*.' x 28, 'q.', the queue) would be {key_bytes} "
            f"bytes, {over} bytes over AMQP's limit of {SHORT_STRING_BYTES}; shorten the "
            f"queue name by {over} bytes (to at most {MAX_QUEUE_BYTES})"
        )


def _positive(seconds: object) -> bool:
    return not isinstance(seconds, bool) and isinstance(seconds, int | float) and seconds > 0


def _check_time_limit(cls: type[Actor]) -> None:
    limit = cls.time_limit_s
    if limit is not None and not _positive(limit):
        raise DefinitionError(
            f"{cls.__qualname__}: time_limit_s must be a positive number of seconds, not {limit!r}"
        )


def _defining_frame() -> FrameType | None:
    """The frame whose code is running the class statement (for local type hints)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name in (
        "__init_subclass__",
        "_defining_frame",
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return frame


def _collect_handlers(cls: type[Actor], frame: FrameType | None) -> dict[str, Handler]:
    found: dict[str, Handler] = {}
    # Base classes first, so that a subclass may override a base's handler by name.
    by_name: dict[str, Handler] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if klass is cls:
                mark = getattr(value, _MARK, None)
                if isinstance(mark, dict):
                    by_name[name] = inspect_handler(
                        value, owner=cls, localns=_local_names(cls, frame), **mark
                    )
                elif isinstance(mark, Handler):
                    by_name[name] = mark
            elif isinstance(klass, type) and issubclass(klass, Actor):
                inherited = {h.name: h for h in klass.handlers.values()}
                if name in inherited:
                    by_name[name] = inherited[name]
    for spec in by_name.values():
        other = found.get(spec.topic)
        if other is not None:
            raise DefinitionError(
                f"{cls.__qualname__}: handlers {other.name!r} and {spec.name!r} both take "
                f"topic {spec.topic!r}; an actor has one handler per topic"
            )
        found[spec.topic] = spec
    return found


def _local_names(cls: type, frame: FrameType | None) -> dict[str, Any]:
    names: dict[str, Any] = {}
    if frame is not None:
        names.update(frame.f_locals)
    names.update(vars(cls))
    names[cls.__name__] = cls
    return names


def inspect_handler(
    function: Callable[..., Any],
    *,
    owner: type | None,
    localns: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    time_limit_s: float | None = None,
) -> Handler:
    """Read a handler's signature: its message type and whether it takes a `Context`.

    Args:
        function: The handler (a method when `owner` is given, else a plain function).
        owner: The actor class for methods, whose ``self`` parameter is skipped.
        localns: Names to resolve string annotations with, besides the module's globals.
        retry: The handler's own retry policy, if any.
        time_limit_s: The handler's own time limit in seconds, if any.

    Raises:
        DefinitionError: The first parameter is not hinted with a `Message` subclass, or
            other parameters are not a single `Context`.
    """
    where = f"{owner.__qualname__}.{function.__name__}" if owner else function.__qualname__
    try:
        hints = typing.get_type_hints(function, localns=dict(localns or {}))
    except Exception as exc:  # any unresolvable hint: name it, with the cause
        raise DefinitionError(f"{where}: cannot resolve its type hints: {exc}") from exc
    params = list(inspect.signature(function).parameters.values())
    if owner is not None:
        params = params[1:]
    is_async = inspect.iscoroutinefunction(function)
    context_type = AsyncContext if is_async else Context
    usage = (
        f"{where}: a{'n async' if is_async else ''} handler takes (msg: SomeMessage) or "
        f"(msg: SomeMessage, ctx: {context_type.__name__}), where SomeMessage is a Message "
        "subclass"
    )
    if not params or len(params) > 2:
        raise DefinitionError(usage)
    message_type = hints.get(params[0].name)
    if not (isinstance(message_type, type) and issubclass(message_type, Message)):
        raise DefinitionError(
            f"{usage}; its first parameter {params[0].name!r} is hinted {message_type!r}"
        )
    if message_type is Message:
        raise DefinitionError(f"{usage}; the base class Message itself has no topic")
    takes_context = len(params) == 2
    if takes_context and hints.get(params[1].name) is not context_type:
        why = (
            " (an async handler awaits ctx.publish and ctx.send, so it takes AsyncContext)"
            if is_async
            else ""
        )
        raise DefinitionError(
            f"{usage}; its second parameter {params[1].name!r} must be hinted "
            f"{context_type.__name__}{why}"
        )
    return Handler(
        name=function.__name__,
        function=function,
        message_type=message_type,
        takes_context=takes_context,
        retry=retry,
        time_limit_s=time_limit_s,
        is_async=is_async,
        reply_type=_reply_type(where, hints.get("return", None)),
    )


def _reply_type(where: str, annotation: object) -> type[Message] | None:
    """The reply type a handler's return annotation declares (None: it answers nothing).

    ``-> Quote`` and ``-> Quote | None`` (``Optional[Quote]``) declare `Quote`; ``-> None``,
    no annotation, or one naming no `Message` declare none.

    Raises:
        DefinitionError: The base class `Message` itself, or several message classes.
    """
    members = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    replies = [m for m in members if isinstance(m, type) and issubclass(m, Message)]
    if not replies:
        return None
    if len(replies) > 1 or len(members) - len(replies) > (1 if type(None) in members else 0):
        raise DefinitionError(
            f"{where}: its return annotation {annotation!r} names more than one type; a "
            "handler answers asks with one Message class (-> Quote, or -> Quote | None)"
        )
    if replies[0] is Message:
        raise DefinitionError(
            f"{where}: its return annotation is the base class Message; name the Message "
            "subclass it answers with (-> Quote)"
        )
    return replies[0]


def _is_union(annotation: object) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)
