"""Middleware: the one way to run code around publishing, handling, settling and a worker's
life.

A `Middleware` subclass overrides the hooks it needs; every hook of the base class does
nothing. A broker holds its middleware in order (`Broker(..., middleware=[...])`, or
``LEVERET["MIDDLEWARE"]`` in Django) and calls them through one `MiddlewareChain`:
before-hooks in the order given, after-hooks in reverse, so that a middleware's after-code
runs inside the middleware given before it. Tracing, metrics, Django's database
connections and a project's own audit log or timing are all middleware.

Hooks observe; they do not decide. A hook that raises is logged (``middleware_hook_failed``,
with the middleware and the hook) and the loop goes on: the message is published, handled
and settled as if the hook had returned. What becomes of a message (ack, retry, dead letter)
is decided by the executor and the actor's retry policy alone.

Where each hook runs:

- ``before_publish`` / ``after_publish``: in the thread or task that publishes, once per
  call (`publish`, `publish_many`, `send`, their async forms, Django's on-commit and outbox
  publishing), around building the messages and waiting for the broker's confirms;
- ``publish_confirmed``: per message, in the thread running the publisher's I/O loop, when
  the broker confirms or refuses it (keep it short: it holds up every other confirm);
- ``before_handle`` / ``after_handle``: in the thread that runs the handler, or on the
  worker's event loop for an ``async def`` handler (keep them short there: they hold up
  every async handler of the process);
- ``after_settle``: where ``after_handle`` ran, once the outcome is handed to the consumer
  (the in-memory broker has acted on it then; RabbitMQ's I/O thread acks it next, a retry
  or dead letter confirmed first);
- ``worker_started``: in the thread that calls `Worker.start`, before the first delivery;
- ``worker_stopping`` / ``worker_stopped``: in the worker's stopping thread, once every
  delivery is settled or given back; ``worker_stopping`` before the worker's connection
  closes, so a middleware can still publish a last word (heartbeats do).

`MemoryBroker.join` handles and settles messages without a worker: it runs the publishing,
handling and settling hooks, not the worker's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from leveret.schemas.errors import InvalidArgument
from leveret.services.observability.logs import get_logger

if TYPE_CHECKING:
    from leveret.schemas.envelope import Envelope
    from leveret.services.delivery import Outcome
    from leveret.services.runtime.worker import Worker

log = get_logger("leveret.middleware")

PublishOperation = Literal["publish", "send", "prepare", "publish_prepared", "ask", "ask_all"]


@dataclass(slots=True)
class Publishing:
    """One call that publishes, as middleware sees it.

    Attributes:
        operation: ``publish`` (by topic), ``send`` (to one actor's queue), ``prepare``
            (built now, published later: Django's on-commit and outbox publishing; its
            ``after_publish`` means built, not sent) or ``publish_prepared`` (what
            ``prepare`` built, published now: its headers were fixed then), ``ask`` (a
            request to one actor, whose answer is awaited: its ``after_publish`` comes once
            the request is handed over, `after_ask` once answered) or ``ask_all`` (a
            request by topic, answered by every actor bound to it).
        exchange: The exchange it goes to: ``{ns}.events``, or ``""`` for a `send`.
        routing_key: The topic, or the actor's queue for a `send`; ``""`` for a batch of
            several topics.
        count: How many messages the call publishes.
        correlation_id: The correlation id the call's messages carry, if any.
        headers: Headers every message of the call carries. ``before_publish`` may add to
            them (tracing puts its ``traceparent`` here); Leveret's own ``x-leveret-*``
            headers cannot be set this way.
        message_ids: The messages' ids, in order, once they are built (empty in
            ``before_publish``).
    """

    operation: PublishOperation
    exchange: str
    routing_key: str
    count: int
    correlation_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    message_ids: list[str] = field(default_factory=list)


class Middleware:
    """Code run around publishing, handling, settling, and a worker's start and stop.

    Subclass it and override the hooks you need; the others do nothing. One instance serves
    every thread of the process, so keep what it holds thread-safe (per-message state
    belongs in a `contextvars.ContextVar`, which follows async handlers too).

    Example::

        class Timing(Middleware):
            def after_handle(self, actor, envelope, outcome, duration_s):
                HANDLE_SECONDS.labels(actor).observe(duration_s)

        broker = Broker(url, middleware=[Timing()])
    """

    def before_publish(self, publishing: Publishing) -> None:
        """Before a call's messages are built; may add headers to ``publishing.headers``."""

    def after_publish(self, publishing: Publishing, error: BaseException | None) -> None:
        """After the call: its messages were confirmed (`error` None), or it raised `error`.

        For ``prepare`` the messages were only built; for the outbox relay's
        ``publish_prepared`` each message's fate comes to `publish_confirmed` instead.
        """

    def publish_confirmed(self, ok: bool, returned: bool, confirm_s: float | None) -> None:
        """The broker confirmed (`ok`) or refused one message.

        On RabbitMQ it runs in the thread running the publisher's I/O loop (its own, or a
        publishing thread the loop is lent to), before the publishing call returns; in memory,
        in the publishing thread. A message refused and sent again is reported each time.

        Args:
            ok: Confirmed (stored, or routed nowhere for a fan-out).
            returned: The broker returned it unroutable first.
            confirm_s: Seconds from writing it to the confirm, when known.
        """

    def after_ask(
        self, actor: str, envelope: Envelope | None, error: BaseException | None, duration_s: float
    ) -> None:
        """An ask ended, in the asking thread: answered (`error` None) or with `error`
        (`AskTimeout`, `RemoteError`, `InvalidReply`, `AskInterrupted`, `PublishError`).

        Args:
            actor: The actor asked (its queue name); for ``ask_all``, the topic.
            envelope: The request's envelope; None when the ask failed before its request
                was built (the broker unreachable while the actor was declared).
            error: Why it got no answer, if it did not.
            duration_s: Seconds from the request's publish to its end.
        """

    def reply_dropped(self, reason: str) -> None:
        """A reply arrived that no caller waits for, and was dropped: ``late`` (its caller
        gave up, or had its answer already) or ``unmatched`` (no request of this process
        has its correlation id: a stray or hostile message). In the thread that received
        it (RabbitMQ: the asking connection's I/O thread)."""

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        """Before a delivery to `actor` (its queue name) is decoded and its handler runs."""

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        """Once the delivery's fate is known, before the broker acts on it.

        `outcome` is None when handling was cut off before a fate was decided (an ``async
        def`` handler cancelled by the worker's shutdown, an interrupt): the broker
        redelivers the message. Whatever `before_handle` opened is closed here either way.
        """

    def after_settle(self, actor: str, outcome: Outcome, error: BaseException | None) -> None:
        """After `outcome` (ack, retry, dead letter) was handed to the broker to act on, or
        that failed (`error`: the delivery then comes back when its channel is replaced)."""

    def worker_started(self, worker: Worker) -> None:
        """The worker starts: its handler threads run, no delivery is taken yet."""

    def worker_stopping(self, worker: Worker) -> None:
        """The worker stopped consuming and settled what it could; its connection is still
        open."""

    def worker_stopped(self, worker: Worker) -> None:
        """The worker stopped: every handler finished or was given back, connections closed."""


_HOOKS = (
    "before_publish",
    "after_publish",
    "publish_confirmed",
    "after_ask",
    "reply_dropped",
    "before_handle",
    "after_handle",
    "after_settle",
    "worker_started",
    "worker_stopping",
    "worker_stopped",
)


class MiddlewareChain:
    """A broker's middleware, called in one loop per hook.

    Only the middleware that override a hook are called for it, so a hook no middleware
    has costs one empty loop. Before-hooks run in the order given, after-hooks in reverse.

    Args:
        middleware: The middleware, in order.

    Raises:
        InvalidArgument: An item is not a `Middleware` (a class given instead of an
            instance, say).
    """

    def __init__(self, middleware: Iterable[Middleware] = ()) -> None:
        items = tuple(middleware)
        for item in items:
            if not isinstance(item, Middleware):
                what = f"the class {item.__name__}" if isinstance(item, type) else repr(item)
                raise InvalidArgument(
                    f"middleware must be Middleware instances, not {what}: "
                    "pass MyMiddleware(), not MyMiddleware"
                )
        self.middleware = items
        self._overriding: dict[str, tuple[Middleware, ...]] = {
            hook: tuple(m for m in items if getattr(type(m), hook) is not getattr(Middleware, hook))
            for hook in _HOOKS
        }

    def __iter__(self) -> Iterator[Middleware]:
        return iter(self.middleware)

    def __len__(self) -> int:
        return len(self.middleware)

    def with_added(self, *middleware: Middleware) -> MiddlewareChain:
        """A chain of these middleware followed by `middleware` (this one is not changed)."""
        return MiddlewareChain((*self.middleware, *middleware))

    def handles(self, hook: str) -> bool:
        """Whether any middleware overrides `hook` (callers skip building its arguments)."""
        return bool(self._overriding[hook])

    def before_publish(self, publishing: Publishing) -> None:
        """Every middleware's `Middleware.before_publish`, in order."""
        for item in self._overriding["before_publish"]:
            _call(item, item.before_publish, publishing)

    def after_publish(self, publishing: Publishing, error: BaseException | None) -> None:
        """Every middleware's `Middleware.after_publish`, in reverse order."""
        for item in reversed(self._overriding["after_publish"]):
            _call(item, item.after_publish, publishing, error)

    def publish_confirmed(self, ok: bool, returned: bool, confirm_s: float | None) -> None:
        """Every middleware's `Middleware.publish_confirmed`, in order."""
        for item in self._overriding["publish_confirmed"]:
            _call(item, item.publish_confirmed, ok, returned, confirm_s)

    def after_ask(
        self, actor: str, envelope: Envelope | None, error: BaseException | None, duration_s: float
    ) -> None:
        """Every middleware's `Middleware.after_ask`, in reverse order."""
        for item in reversed(self._overriding["after_ask"]):
            _call(item, item.after_ask, actor, envelope, error, duration_s)

    def reply_dropped(self, reason: str) -> None:
        """Every middleware's `Middleware.reply_dropped`, in order."""
        for item in self._overriding["reply_dropped"]:
            _call(item, item.reply_dropped, reason)

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        """Every middleware's `Middleware.before_handle`, in order."""
        for item in self._overriding["before_handle"]:
            _call(item, item.before_handle, actor, envelope)

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        """Every middleware's `Middleware.after_handle`, in reverse order."""
        for item in reversed(self._overriding["after_handle"]):
            _call(item, item.after_handle, actor, envelope, outcome, duration_s)

    def after_settle(self, actor: str, outcome: Outcome, error: BaseException | None) -> None:
        """Every middleware's `Middleware.after_settle`, in reverse order."""
        for item in reversed(self._overriding["after_settle"]):
            _call(item, item.after_settle, actor, outcome, error)

    def worker_started(self, worker: Worker) -> None:
        """Every middleware's `Middleware.worker_started`, in order."""
        for item in self._overriding["worker_started"]:
            _call(item, item.worker_started, worker)

    def worker_stopping(self, worker: Worker) -> None:
        """Every middleware's `Middleware.worker_stopping`, in reverse order."""
        for item in reversed(self._overriding["worker_stopping"]):
            _call(item, item.worker_stopping, worker)

    def worker_stopped(self, worker: Worker) -> None:
        """Every middleware's `Middleware.worker_stopped`, in reverse order."""
        for item in reversed(self._overriding["worker_stopped"]):
            _call(item, item.worker_stopped, worker)


def _call(item: Middleware, hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception as exc:  # a hook never decides a message's fate
        log.error(
            "middleware_hook_failed",
            middleware=type(item).__qualname__,
            hook=getattr(hook, "__name__", "?"),
            error=f"{type(exc).__name__}: {_text(exc)}",
            exc_info=True,
        )


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001  # a user's __str__ that raises: the type will do
        return "(the error's message could not be read)"
