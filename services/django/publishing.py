"""Publishing from Django: after the transaction commits, or through the outbox.

`TransactionalDispatcher` is what the app configures as the process's broker, so
`publish(msg)` and `Actor.send(msg)` follow the database transaction:

- outside ``transaction.atomic()``: published at once, confirmed;
- inside: published when the outermost transaction commits (`transaction.on_commit`),
  nothing when it rolls back; or, with the outbox (``LEVERET["OUTBOX"]`` or
  ``outbox=True``), written to the outbox table in the same transaction and published by
  the relay.

`publish_now` / `send_now` bypass the transaction. `use_outbox` makes every publish of a
block of code go through the outbox.

The messages one transaction leaves for after its commit share one deadline: once one of
them finds the broker unreachable (or gets no confirm in time while the broker is
unreachable or blocks publishing), the others are not tried but logged as lost at once, so
a commit with the broker down waits one connect deadline (5 s), not one per message. A
caller's `timeout` is counted once for them all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Unpack

from django.db import connections, transaction

from leveret.actors import dispatch
from leveret.actors.actor import ActorRef
from leveret.actors.dispatch import AskArgs, PublishArgs
from leveret.django import outbox as outbox_table
from leveret.django.project import project_broker
from leveret.django.settings import load
from leveret.schemas.errors import (
    BrokerConnectionError,
    BrokerUnavailable,
    LeveretError,
    PublishError,
    PublishTimeout,
)
from leveret.schemas.message import Message
from leveret.services.broker import Broker, OutgoingMessage
from leveret.services.observability.logs import get_logger

log = get_logger("leveret.django")

_outbox_scope: ContextVar[bool] = ContextVar("leveret_outbox_scope", default=False)
_AFTER_COMMIT_ATTRIBUTE = "leveret_after_commit"


@dataclass(eq=False)
class _AfterCommit:
    """What the publishes one transaction left for after its commit share: when the first
    began (a caller's `timeout` is counted once for them all), and the broker's failure
    once one met it (the others are then not tried)."""

    alias: str
    started: float | None = None
    failed: str | None = None

    def forget(self) -> None:
        """The transaction committed: the next one gets its own (its publishes, about to
        run, each hold this one)."""
        connection = connections[self.alias]
        if getattr(connection, _AFTER_COMMIT_ATTRIBUTE, None) is self:
            delattr(connection, _AFTER_COMMIT_ATTRIBUTE)


def _broker_down(broker: Broker, error: LeveretError) -> bool:
    """Whether `error` says the broker cannot take messages now (so the transaction's other
    messages would fail the same way): unreachable, or a confirm that did not come while
    the broker is unreachable or blocks publishing. A confirm that did not come for one
    message only (a queue that refuses it, a quorum queue without a leader) is that
    message's: the others are still tried."""
    if isinstance(error, BrokerUnavailable | BrokerConnectionError):
        return True
    if not isinstance(error, PublishTimeout):
        return False
    try:
        broker.check_available(timeout=WAIT_FOR_BROKER_S)
    except BrokerUnavailable:
        return True
    except LeveretError:  # cannot tell: try the others
        return False
    return False


WAIT_FOR_BROKER_S = 1.0
"""After a confirm that did not come at commit, how long to look whether the broker is
there before the transaction's other messages are tried."""


def _after_commit_of(alias: str) -> _AfterCommit:
    """The shared state of the current transaction's after-commit publishes on `alias`.

    It is this transaction's while its `forget` waits among the transaction's commit
    callbacks; one whose `forget` is gone (rolled back with its savepoint or transaction)
    belongs to no transaction any more, and a new one is made.
    """
    connection = connections[alias]
    shared: _AfterCommit | None = getattr(connection, _AFTER_COMMIT_ATTRIBUTE, None)
    waiting = getattr(connection, "run_on_commit", None)  # Django's list of callbacks
    if (
        shared is None
        or not isinstance(waiting, list)
        or not any(len(entry) > 1 and entry[1] == shared.forget for entry in waiting)
    ):
        shared = _AfterCommit(alias)
        setattr(connection, _AFTER_COMMIT_ATTRIBUTE, shared)
        transaction.on_commit(shared.forget, using=alias)
    return shared


@contextlib.contextmanager
def use_outbox() -> Iterator[None]:
    """Publish everything inside the block through the outbox (a context manager, or a
    decorator for each call of a function).

    Every way of publishing that follows the transactions does: `publish` and `send`
    (``leveret`` and ``leveret.django``), `Actor.send`, ``ctx.send``/``ctx.publish`` in a
    handler, and Django tasks' ``enqueue()``; inside ``transaction.atomic()`` the rows are
    written in the transaction, outside it at once. Only a call's own ``outbox=False``, and
    `publish_now`/`send_now`, go around it. It holds for the current thread (or asyncio
    task) until the block ends; ``LEVERET["OUTBOX"] = True`` does the same for every
    transaction of the project.

    ```python
    with use_outbox(), transaction.atomic():
        order = Order.objects.create(...)
        publish(OrderPlaced(order_id=order.id))
        send_receipt.enqueue(order.id)       # a Django task: in the outbox too
    ```
    """
    token = _outbox_scope.set(True)
    try:
        yield
    finally:
        _outbox_scope.reset(token)


class TransactionArgs(PublishArgs, total=False):
    """The keyword arguments of Django's `publish` and `send`: `PublishArgs` and these.

    With them, `timeout` bounds the wait for the broker's confirm and, with `fail_fast`,
    for its connection (instead of ``CONFIRM_TIMEOUT_S``).

    Attributes:
        using: The database alias whose transaction to follow, instead of the
            dispatcher's (the ``DATABASE`` setting).
        outbox: True: write to the outbox (also outside a transaction); False: never;
            None: inside `use_outbox`, True; else as configured (``OUTBOX``).
        fail_fast: Inside a transaction (without the outbox), make sure now that the
            broker can take the message, and raise `BrokerUnavailable` here if not; None:
            the ``FAIL_FAST`` setting.
    """

    using: str | None
    outbox: bool | None
    fail_fast: bool | None


class TransactionalDispatcher:
    """A `Broker` wrapper whose publish and send follow Django's transactions.

    Args:
        broker: The broker that publishes; the project's broker (`project_broker`, built
            from the settings in force) if None.
        outbox: Use the outbox inside transactions unless a call says otherwise; the
            ``OUTBOX`` setting if None.
        using: The database alias whose transactions it follows; the ``DATABASE`` setting
            if None.
    """

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        outbox: bool | None = None,
        using: str | None = None,
    ) -> None:
        self._broker = broker
        self._outbox = outbox
        self._using = using

    @property
    def broker(self) -> Broker:
        """The broker that publishes."""
        return self._broker if self._broker is not None else project_broker()

    @property
    def outbox(self) -> bool:
        """Whether publishing inside a transaction writes to the outbox by default."""
        return self._outbox if self._outbox is not None else load().outbox

    @property
    def using(self) -> str:
        """The database alias whose transactions publishing follows."""
        return self._using if self._using is not None else load().database

    def __repr__(self) -> str:
        broker = repr(self._broker) if self._broker is not None else "the project's broker"
        return f"<TransactionalDispatcher {broker} outbox={self.outbox} using={self.using}>"

    def publish(self, message: Message, **options: Unpack[TransactionArgs]) -> str:
        """Publish by topic, after commit or through the outbox inside a transaction.

        Args:
            message: The message.
            **options: `TransactionArgs`: `PublishArgs` (a delay counts from this call),
                and how to follow the transaction.

        Returns:
            The message id (fixed now, also when the message goes out later).

        Raises:
            PublishError: Outside a transaction, the broker did not confirm.
            BrokerUnavailable: With `fail_fast`, the broker cannot take messages now.
            InvalidArgument: An invalid option (see `PublishArgs`).
        """
        return self._dispatch(None, message, options)

    def send(self, actor: ActorRef, message: Message, **options: Unpack[TransactionArgs]) -> str:
        """Deliver to one actor's queue; like `publish` as to transactions.

        Raises:
            NotHandled: The actor has no handler for the message's type.
            PublishError: Outside a transaction, not confirmed or no such queue.
            BrokerUnavailable: With `fail_fast`, the broker cannot take messages now.
        """
        return self._dispatch(actor, message, options)

    def ask(self, actor: ActorRef, message: Message, **options: Unpack[AskArgs]) -> Any:
        """Ask an actor and wait for its answer (`Broker.ask`): at once, whatever the
        transaction (an answer cannot wait for a commit). A view that asks holds its
        request thread until the answer or the deadline: keep the timeout short."""
        return self.broker.ask(actor, message, **options)

    async def ask_async(self, actor: ActorRef, message: Message, **options: Unpack[AskArgs]) -> Any:
        """`ask`, awaited (`Broker.ask_async`), for async views."""
        return await self.broker.ask_async(actor, message, **options)

    def _dispatch(self, actor: ActorRef | None, message: Message, options: TransactionArgs) -> str:
        alias = options.pop("using", None) or self.using
        outbox = options.pop("outbox", None)
        fail_fast = options.pop("fail_fast", None)
        args: PublishArgs = options  # the broker's own, once the three above are taken out
        in_transaction = connections[alias].in_atomic_block
        if outbox is None:
            outbox = _outbox_scope.get() or (self.outbox and in_transaction)
        broker = self.broker
        if not outbox and not in_transaction:
            if actor is None:
                return broker.publish(message, **args)
            return broker.send(actor, message, **args)
        item = broker.prepare(message, actor=actor, **args)  # checks every option
        if outbox:
            outbox_table.store(item, using=alias, namespace=broker.namespace)
            return item.envelope.message_id
        timeout = args.get("timeout")
        if fail_fast if fail_fast is not None else load().fail_fast:
            broker.check_available(timeout)
        # One callback per message: a savepoint rolled back drops exactly its own. They
        # share one deadline (`_AfterCommit`).
        shared = _after_commit_of(alias)
        transaction.on_commit(
            lambda: self._after_commit(broker, actor, item, timeout, shared), using=alias
        )
        return item.envelope.message_id

    def _after_commit(
        self,
        broker: Broker,
        actor: ActorRef | None,
        item: OutgoingMessage,
        timeout: float | None,
        shared: _AfterCommit,
    ) -> None:
        now = time.monotonic()
        if shared.started is None:
            shared.started = now
        try:
            if shared.failed is not None:
                raise PublishError(
                    "not tried: an earlier message of its transaction met the broker's "
                    f"failure at commit ({shared.failed})",
                    message_id=item.envelope.message_id,
                )
            left_s = None if timeout is None else timeout - (now - shared.started)
            if left_s is not None and left_s <= 0:
                raise PublishTimeout(
                    f"not tried: its transaction's timeout ({timeout}s) was used up by the "
                    "messages before it",
                    message_id=item.envelope.message_id,
                )
            if actor is not None:
                broker.declare_on_first_use(actor, timeout=left_s)
            broker.publish_prepared([item], timeout=left_s)
        except LeveretError as exc:
            if shared.failed is None and _broker_down(broker, exc):
                shared.failed = str(exc)  # the broker's, not this message's alone
            # The transaction has committed: raising would not undo it, and would stop the
            # other on-commit callbacks. Say loudly what was lost; the outbox prevents this.
            log.error(
                "message_lost_after_commit",
                message_id=item.envelope.message_id,
                topic=item.envelope.topic,
                queue=item.route.queue,
                error=str(exc),
                hint="the broker failed at commit time; use the outbox (or FAIL_FAST to "
                "learn before the commit) to never lose one",
            )


def _dispatcher() -> TransactionalDispatcher:
    current = dispatch.current()
    if isinstance(current, TransactionalDispatcher):
        return current
    # A plain broker configured (a test fixture): follow transactions all the same.
    if isinstance(current, Broker):
        return TransactionalDispatcher(current)
    raise LeveretError(f"the configured broker {current!r} is not a Leveret Broker")


def current_broker() -> Broker:
    """The broker publishing goes through in this process (the project's, or the one a
    test or the worker configured).

    Raises:
        ConfigurationError: No broker is configured.
    """
    return _dispatcher().broker


def publish(message: Message, **options: Unpack[TransactionArgs]) -> str:
    """Publish by topic, following the transaction of `using` (see `TransactionalDispatcher`).

    Raises:
        ConfigurationError: No broker is configured (the app is not in INSTALLED_APPS).
        PublishError: Outside a transaction, the broker did not confirm.
        BrokerUnavailable: With `fail_fast` (or ``FAIL_FAST``) inside a transaction, the
            broker cannot take messages now; nothing will be sent.
    """
    return _dispatcher().publish(message, **dispatch.carried(options))


def send(actor: ActorRef, message: Message, **options: Unpack[TransactionArgs]) -> str:
    """Deliver to one actor's queue, following the transaction of `using`.

    Raises:
        NotHandled: The actor has no handler for the message's type.
        ConfigurationError: No broker is configured.
        PublishError: Outside a transaction, not confirmed or no such queue.
        BrokerUnavailable: With `fail_fast` (or ``FAIL_FAST``) inside a transaction, the
            broker cannot take messages now; nothing will be sent.
    """
    return _dispatcher().send(actor, message, **dispatch.carried(options))


def publish_now(message: Message, **options: Unpack[PublishArgs]) -> str:
    """Publish at once and wait for the confirm, even inside a transaction.

    Raises:
        PublishError: The broker did not confirm (within `timeout`, if given).
    """
    return current_broker().publish(message, **dispatch.carried(options))


def send_now(actor: ActorRef, message: Message, **options: Unpack[PublishArgs]) -> str:
    """Deliver to one actor's queue at once, even inside a transaction.

    Raises:
        NotHandled: The actor has no handler for the message's type.
        PublishError: Not confirmed (within `timeout`, if given), or no such queue.
    """
    return current_broker().send(actor, message, **dispatch.carried(options))
