"""Publishing from Django: after the transaction commits, or through the outbox.

`TransactionalDispatcher` is what the app configures as the process's broker, so
`publish(msg)` and `Actor.send(msg)` follow the database transaction:

- outside ``transaction.atomic()``: published at once, confirmed;
- inside: published when the outermost transaction commits (`transaction.on_commit`),
  nothing when it rolls back; or, with the outbox (``LEVERET["OUTBOX"]`` or
  ``outbox=True``), written to the outbox table in the same transaction and published by
  the relay.

`publish_now` / `send_now` bypass the transaction.
"""

from __future__ import annotations

from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from leveret.actors import dispatch
from leveret.actors.actor import ActorRef
from leveret.actors.handling import current_correlation_id
from leveret.django import outbox as outbox_table
from leveret.schemas.errors import LeveretError
from leveret.schemas.message import Message
from leveret.services.broker import Broker, Prepared
from leveret.services.logs import get_logger

log = get_logger("leveret.django")


class TransactionalDispatcher:
    """A `Broker` wrapper whose publish and send follow Django's transactions.

    Args:
        broker: The broker that publishes.
        outbox: Use the outbox inside transactions unless a call says otherwise.
        using: The database alias whose transactions it follows (default ``"default"``).
    """

    def __init__(
        self, broker: Broker, *, outbox: bool = False, using: str = DEFAULT_DB_ALIAS
    ) -> None:
        self.broker = broker
        self.outbox = outbox
        self.using = using

    def __repr__(self) -> str:
        return f"<TransactionalDispatcher {self.broker!r} outbox={self.outbox} using={self.using}>"

    def publish(
        self,
        message: Message,
        *,
        delay: dispatch.Delay = None,
        eta: datetime | None = None,
        correlation_id: str | None = None,
        using: str | None = None,
        outbox: bool | None = None,
    ) -> str:
        """Publish by topic, after commit or through the outbox inside a transaction.

        Args:
            message: The message.
            delay: As for `Broker.publish` (counted from this call).
            eta: As for `Broker.publish`.
            correlation_id: Carried on from the message that caused this one.
            using: The database alias to follow instead of the dispatcher's.
            outbox: True: write to the outbox (also outside a transaction); False: never;
                None: as configured.

        Returns:
            The message id (fixed now, also when the message goes out later).

        Raises:
            PublishError: Outside a transaction, the broker did not confirm.
        """
        return self._dispatch(None, message, delay, eta, correlation_id, using, outbox)

    def send(
        self,
        actor: ActorRef,
        message: Message,
        *,
        delay: dispatch.Delay = None,
        eta: datetime | None = None,
        correlation_id: str | None = None,
        using: str | None = None,
        outbox: bool | None = None,
    ) -> str:
        """Deliver to one actor's queue; like `publish` as to transactions.

        Raises:
            NotHandled: The actor has no handler for the message's type.
            PublishError: Outside a transaction, not confirmed or no such queue.
        """
        return self._dispatch(actor, message, delay, eta, correlation_id, using, outbox)

    def _dispatch(
        self,
        actor: ActorRef | None,
        message: Message,
        delay: dispatch.Delay,
        eta: datetime | None,
        correlation_id: str | None,
        using: str | None,
        outbox: bool | None,
    ) -> str:
        alias = using or self.using
        in_transaction = connections[alias].in_atomic_block
        use_outbox = outbox if outbox is not None else (self.outbox and in_transaction)
        if not use_outbox and not in_transaction:
            if actor is None:
                return self.broker.publish(
                    message, delay=delay, eta=eta, correlation_id=correlation_id
                )
            return self.broker.send(
                actor, message, delay=delay, eta=eta, correlation_id=correlation_id
            )
        item = self.broker.prepare(
            message, actor=actor, delay=delay, eta=eta, correlation_id=correlation_id
        )
        if use_outbox:
            outbox_table.store(item, using=alias)
        else:
            # One callback per message: a savepoint rolled back drops exactly its own.
            transaction.on_commit(lambda: self._after_commit(actor, item), using=alias)
        return item.envelope.message_id

    def _after_commit(self, actor: ActorRef | None, item: Prepared) -> None:
        try:
            if actor is not None:
                self.broker.declare_on_first_use(actor)
            self.broker.publish_prepared([item])
        except LeveretError as exc:
            # The transaction has committed: raising would not undo it, and would stop the
            # other on-commit callbacks. Say loudly what was lost; the outbox prevents this.
            log.error(
                "message_lost_after_commit",
                message_id=item.envelope.message_id,
                topic=item.envelope.topic,
                queue=item.route.queue,
                error=str(exc),
                hint="the broker failed at commit time; use the outbox to never lose one",
            )


def _dispatcher() -> TransactionalDispatcher:
    current = dispatch.current()
    if isinstance(current, TransactionalDispatcher):
        return current
    # A plain broker configured (a test fixture): follow transactions all the same.
    if isinstance(current, Broker):
        return TransactionalDispatcher(current)
    raise LeveretError(f"the configured broker {current!r} is not a Leveret Broker")


def _broker() -> Broker:
    return _dispatcher().broker


def publish(
    message: Message,
    *,
    delay: dispatch.Delay = None,
    eta: datetime | None = None,
    using: str | None = None,
    outbox: bool | None = None,
) -> str:
    """Publish by topic, following the transaction of `using` (see `TransactionalDispatcher`).

    Raises:
        ConfigurationError: No broker is configured (the app is not in INSTALLED_APPS).
        PublishError: Outside a transaction, the broker did not confirm.
    """
    return _dispatcher().publish(
        message,
        delay=delay,
        eta=eta,
        correlation_id=current_correlation_id(),
        using=using,
        outbox=outbox,
    )


def send(
    actor: ActorRef,
    message: Message,
    *,
    delay: dispatch.Delay = None,
    eta: datetime | None = None,
    using: str | None = None,
    outbox: bool | None = None,
) -> str:
    """Deliver to one actor's queue, following the transaction of `using`.

    Raises:
        NotHandled: The actor has no handler for the message's type.
        ConfigurationError: No broker is configured.
        PublishError: Outside a transaction, not confirmed or no such queue.
    """
    return _dispatcher().send(
        actor,
        message,
        delay=delay,
        eta=eta,
        correlation_id=current_correlation_id(),
        using=using,
        outbox=outbox,
    )


def publish_now(
    message: Message, *, delay: dispatch.Delay = None, eta: datetime | None = None
) -> str:
    """Publish at once and wait for the confirm, even inside a transaction.

    Raises:
        PublishError: The broker did not confirm.
    """
    return _broker().publish(message, delay=delay, eta=eta, correlation_id=current_correlation_id())


def send_now(
    actor: ActorRef, message: Message, *, delay: dispatch.Delay = None, eta: datetime | None = None
) -> str:
    """Deliver to one actor's queue at once, even inside a transaction.

    Raises:
        NotHandled: The actor has no handler for the message's type.
        PublishError: Not confirmed, or no such queue.
    """
    return _broker().send(
        actor, message, delay=delay, eta=eta, correlation_id=current_correlation_id()
    )
