"""The outbox relay: publishes pending outbox rows with confirms and marks them sent.

Each batch is one database transaction: lock pending rows, publish them (confirmed), mark
them sent, commit. Several relays may run at once:

- PostgreSQL (and any database with ``SELECT … FOR UPDATE SKIP LOCKED``): each relay locks
  its own rows and skips those another holds, so no row is published twice while the
  relays and the database run normally.
- SQLite (no row locks): each batch first takes SQLite's database write lock, so relays
  take turns, one batch at a time; the same no-duplicate property holds, without
  parallelism.

A relay that dies after the broker confirmed but before its commit leaves the rows
pending: they are published again (same message id). Consumers must be idempotent, as
always with at-least-once delivery.

Each row's fate is its own. A confirmed row is marked sent even when another row of its
batch fails. A row the broker refuses (its queue is gone, a nack, a message that cannot be
encoded), or that cannot be built into a message (`leveret.django.outbox.check_buildable`:
anything with database access may have written it) or even read, backs off on its own
(1 s doubling up to 5 min), records its error, and is marked failed after
``max_attempts`` (``manage.py leveret_relay --status`` shows it, ``--retry-failed`` puts it
back). While the broker is unreachable, rows wait without
using up their attempts, and the relay pauses with its own backoff.

Order: rows are published in ``id`` order; rows of one transaction (a group) wait while an
earlier row of the same group is pending (held by another relay, or in backoff). A row
marked failed no longer holds up its group.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from django.db import DatabaseError, DataError, close_old_connections, connections, transaction
from django.db.models import Min, QuerySet

from leveret.actors.actor import ActorRef
from leveret.django.outbox import check_buildable
from leveret.schemas.errors import (
    BrokerConnectionError,
    BrokerUnavailable,
    ConfigurationError,
    InvalidArgument,
    LeveretError,
    PublishError,
    PublishTimeout,
)
from leveret.services.broker import Broker, OutgoingMessage
from leveret.services.observability.logs import get_logger

if TYPE_CHECKING:
    from leveret.django.models import OutboxMessage as OutboxMessageType

log = get_logger("leveret.relay")

ROW_FIRST_BACKOFF_S = 1.0
ROW_MAX_BACKOFF_S = 300.0
DECLARE_RETRY_S = 60.0


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """The outbox at a glance (`outbox_status`).

    Attributes:
        pending: Rows waiting to be sent (in backoff included).
        failed: Rows given up on after their attempts ran out.
        oldest_pending_age_s: Seconds since the oldest pending row was written, if any.
        last_errors: The errors of up to five most recently failed rows.
    """

    pending: int
    failed: int
    oldest_pending_age_s: float | None
    last_errors: tuple[str, ...]


class Relay:
    """Publishes the outbox of database `using` through `broker`.

    Args:
        broker: The broker to publish to.
        using: The database alias of the outbox.
        actors: Declared before the first publish, so that sends find their queues.
        batch_size: Rows per transaction.
        poll_interval_s: Pause when the outbox is empty.
        max_backoff_s: Longest pause between retries while the broker is down.
        prune_after_s: Sent rows older than this are deleted (None: never).
        max_attempts: Attempts after which a row the broker keeps refusing is marked failed.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        using: str = "default",
        actors: Sequence[ActorRef] = (),
        batch_size: int = 100,
        poll_interval_s: float = 1.0,
        max_backoff_s: float = 30.0,
        prune_after_s: float | None = 7 * 24 * 3600.0,
        max_attempts: int = 10,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, not {batch_size}")
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, not {max_attempts}")
        self.broker = broker
        self.using = using
        self.actors = list(actors)
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self.prune_after_s = prune_after_s
        self.max_attempts = max_attempts
        self.sent = 0
        self._undeclared = list(self.actors)
        self._next_declare_at = 0.0
        self._failures = 0
        self._last_prune = 0.0

    def backoff_s(self, failures: int) -> float:
        """Pause after `failures` failed batches in a row: 0.5 s doubling, capped."""
        return float(min(self.max_backoff_s, 0.5 * 2 ** max(0, failures - 1)))

    def row_backoff_s(self, attempts: int) -> float:
        """Pause before a refused row's next attempt, after `attempts` attempts."""
        return float(min(ROW_MAX_BACKOFF_S, ROW_FIRST_BACKOFF_S * 2 ** max(0, attempts - 1)))

    def run_once(self) -> int:
        """Publish one batch; return how many rows were sent.

        Confirmed rows are marked sent, refused ones back off on their own (and are marked
        failed once their attempts run out), in the same transaction.

        Raises:
            PublishTimeout: No row was confirmed in time: the rows stay pending, their next
                attempt pushed back, their attempts unused.
            BrokerUnavailable: The broker cannot be reached (nothing was sent): the same.
        """
        try:
            with transaction.atomic(using=self.using):
                sent, timeout = self._publish(self._lock_batch())
        except (PublishTimeout, BrokerUnavailable):
            # Raised before any row's fate was known (declaring the actors or the delay
            # levels): rolled back, nothing recorded; the relay backs off as for a timeout.
            self._failures += 1
            raise
        if timeout is not None:
            raise timeout  # after the commit, which keeps the rows' new backoff
        return sent

    def send_now(self, ids: Sequence[int]) -> int:
        """Publish these rows now, whatever their backoff, failed ones too; how many went.

        Rows already sent, or held by a relay at this moment, are left alone; the others go
        in ``id`` order and meet the same fate as in `run_once` (a confirmed row is marked
        sent, a refused one records its error).

        Raises:
            PublishTimeout: No row was confirmed in time.
            BrokerUnavailable: The broker cannot be reached (nothing was sent).
        """
        from leveret.django.models import OutboxMessage

        with transaction.atomic(using=self.using):
            chosen = (
                OutboxMessage.objects.using(self.using)
                .filter(id__in=list(ids), sent_at__isnull=True)
                .order_by("id")
            )
            sent, timeout = self._publish(self._locked(chosen))
        if timeout is not None:
            raise timeout
        return sent

    def _publish(self, rows: list[OutboxMessageType]) -> tuple[int, PublishError | None]:
        """Publish locked `rows` and record each one's fate (inside the caller's atomic).

        A row that cannot be built into a message is set aside like a refused one; the
        others are published.

        Returns:
            How many were sent, and the timeout to raise once committed when none was.
        """
        from leveret.django.models import OutboxMessage

        if not rows:
            return 0, None
        self._declare_actors()
        now = datetime.now(UTC)
        built: list[tuple[OutboxMessageType, OutgoingMessage]] = []
        for row in rows:
            try:
                item = row.prepared(now)
                check_buildable(item, namespace=self.broker.namespace)
            except Exception as exc:  # noqa: BLE001  # anything a row holds is its own fault
                self._refused(row.id, row.message_id, row.topic, row.attempts, exc, now)
            else:
                built.append((row, item))
        if not built:
            return 0, None
        errors = self._publish_each([item for _row, item in built])
        rows = [row for row, _item in built]
        sent = [row.id for row, error in zip(rows, errors, strict=True) if error is None]
        timed_out = [
            row.id for row, error in zip(rows, errors, strict=True) if _brokers_fault(error)
        ]
        first_timeout = next((e for e in errors if _brokers_fault(e)), None)
        if sent:
            OutboxMessage.objects.using(self.using).filter(id__in=sent).update(
                sent_at=datetime.now(UTC), last_error="", failed_at=None
            )
        if timed_out and first_timeout is not None:
            # The broker is unreachable or blocks publishing: not the rows' fault.
            self._failures += 0 if sent else 1
            OutboxMessage.objects.using(self.using).filter(id__in=timed_out).update(
                next_attempt_at=now + timedelta(seconds=self.backoff_s(self._failures)),
                last_error=str(first_timeout)[:2000],
            )
        for row, error in zip(rows, errors, strict=True):
            if error is not None and not _brokers_fault(error):
                self._refused(row.id, row.message_id, row.topic, row.attempts, error, now)
        if sent:
            self._failures = 0
        self.sent += len(sent)
        return len(sent), first_timeout if not sent else None

    def _publish_each(self, items: list[OutgoingMessage]) -> list[PublishError | None]:
        """Every item's fate; one the transport refuses for the whole batch (a case
        `check_buildable` did not foresee) is found by publishing the items one by one."""
        try:
            return self.broker.publish_prepared_each(items)
        except InvalidArgument as exc:
            if len(items) == 1:
                return [PublishError(str(exc), message_id=items[0].envelope.message_id)]
        fates: list[PublishError | None] = []
        for item in items:
            try:
                fates.extend(self.broker.publish_prepared_each([item]))
            except InvalidArgument as exc:
                fates.append(PublishError(str(exc), message_id=item.envelope.message_id))
        return fates

    def _refused(
        self,
        row_id: int,
        message_id: object,
        topic: object,
        attempts_before: object,
        error: BaseException,
        now: datetime,
    ) -> None:
        """Record a refusal of row `row_id` (or a row that cannot be built or read): its
        own backoff, or failed once attempts run out."""
        from leveret.django.models import OutboxMessage

        before = attempts_before if isinstance(attempts_before, int) else 0
        attempts = max(0, before) + 1
        failed = attempts >= self.max_attempts
        retry_in_s = self.row_backoff_s(attempts)
        text = str(error) if isinstance(error, LeveretError) else f"{type(error).__name__}: {error}"
        OutboxMessage.objects.using(self.using).filter(id=row_id).update(
            attempts=attempts,
            last_error=text[:2000],
            next_attempt_at=now + timedelta(seconds=retry_in_s),
            failed_at=now if failed else None,
        )
        fields = {
            "row": row_id,
            "message_id": str(message_id)[:64],
            "topic": str(topic)[:255],
            "attempts": attempts,
            "error": text[:2000],
        }
        if failed:
            log.error(
                "outbox_row_failed",
                **fields,
                hint="manage.py leveret_relay --status lists it; --retry-failed sends it again",
            )
        else:
            log.warning("outbox_row_refused", **fields, retry_in_s=retry_in_s)

    def _declare_actors(self) -> None:
        """Declare the actors not declared yet, each on its own; a refusal blocks no row."""
        if not self._undeclared or time.monotonic() < self._next_declare_at:
            return
        left = []
        for actor in self._undeclared:
            try:
                self.broker.declare(actor)
            except BrokerConnectionError as exc:
                # The broker cannot be reached: no row can go either. Nothing is recorded
                # against the rows; the batch is tried again after the relay's backoff.
                raise BrokerUnavailable(f"declaring the actors: {exc}") from exc
            except LeveretError as exc:
                left.append(actor)
                log.error(
                    "relay_declare_failed",
                    actor=getattr(actor, "__qualname__", repr(actor)),
                    error=str(exc),
                    retry_in_s=DECLARE_RETRY_S,
                )
        self._undeclared = left
        self._next_declare_at = time.monotonic() + DECLARE_RETRY_S

    def _lock_batch(self) -> list[OutboxMessageType]:
        from leveret.django.models import OutboxMessage

        pending = (
            OutboxMessage.objects.using(self.using)
            .filter(
                sent_at__isnull=True,
                failed_at__isnull=True,
                next_attempt_at__lte=datetime.now(UTC),
            )
            .order_by("id")
        )
        rows = self._locked(pending[: self.batch_size])
        if not rows:
            return rows
        first: dict[str, int] = {}
        for row in rows:
            first.setdefault(row.group, row.id)
        # A group whose earlier row is still unsent (another relay holds it, or it waits
        # for a retry) waits: rows of one transaction go out in order.
        blocked = {
            group
            for group, row_id in OutboxMessage.objects.using(self.using)
            .filter(
                sent_at__isnull=True,
                failed_at__isnull=True,
                group__in=list(first),
                id__lt=max(first.values()),
            )
            .values_list("group", "id")
            if row_id < first[group]
        }
        return [row for row in rows if row.group not in blocked]

    def _locked(self, rows: QuerySet[OutboxMessageType]) -> list[OutboxMessageType]:
        """`rows`, locked for this transaction; rows another relay holds are skipped.

        A row the database holds but Django cannot read (a value another program wrote
        that no field converts) is set aside as refused, and the others are returned.
        """
        from leveret.django.models import OutboxMessage

        connection = connections[self.using]
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        else:
            # SQLite: a write first takes the database's write lock for this transaction,
            # so no other relay reads the same pending rows until this one commits.
            with connection.cursor() as cursor:
                table = connection.ops.quote_name(OutboxMessage._meta.db_table)
                cursor.execute(f"UPDATE {table} SET attempts = attempts WHERE 1 = 0")  # noqa: S608
        try:
            return list(rows)
        except Exception as exc:  # sorted out row by row below
            if _database_failed(exc):
                raise
        readable = []
        table = OutboxMessage.objects.using(self.using)
        for row_id, message_id, topic, attempts in rows.values_list(
            "id", "message_id", "topic", "attempts"
        ):
            try:
                readable.append(table.get(id=row_id))
            except Exception as exc:  # this row's values are its own fault
                if _database_failed(exc):
                    raise
                self._refused(row_id, message_id, topic, attempts, exc, datetime.now(UTC))
        return readable

    def prune(self) -> int:
        """Delete sent rows older than `prune_after_s`; return how many."""
        from leveret.django.models import OutboxMessage

        if self.prune_after_s is None:
            return 0
        cutoff = datetime.now(UTC) - timedelta(seconds=self.prune_after_s)
        deleted, _ = (
            OutboxMessage.objects.using(self.using)
            .filter(sent_at__isnull=False, sent_at__lt=cutoff)
            .delete()
        )
        return int(deleted)

    def run(self, stop: threading.Event) -> None:
        """Relay until `stop` is set: batches back to back, pauses when idle or failing."""
        log.info("relay_started", database=self.using, broker=repr(self.broker))
        try:
            while not stop.is_set():
                close_old_connections()
                pause = 0.0
                try:
                    if time.monotonic() - self._last_prune > 60:
                        self._last_prune = time.monotonic()
                        pruned = self.prune()
                        if pruned:
                            log.info("outbox_pruned", rows=pruned)
                    if self.run_once() == 0:
                        pause = self.poll_interval_s
                except LeveretError as exc:
                    if not _brokers_fault(exc):
                        self._failures += 1  # the broker's failures have counted themselves
                    pause = self.backoff_s(self._failures)
                    log.warning("relay_publish_failed", error=str(exc), retry_in_s=pause)
                except Exception as exc:  # noqa: BLE001  # a database error: retry later
                    self._failures += 1
                    pause = self.backoff_s(self._failures)
                    log.error("relay_failed", error=repr(exc), retry_in_s=pause)
                if pause:
                    stop.wait(pause)
        finally:
            connections[self.using].close()
            log.info("relay_stopped", sent=self.sent)

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run the relay in a daemon thread until `stop` is set."""
        thread = threading.Thread(target=self.run, args=(stop,), name="leveret-relay", daemon=True)
        thread.start()
        return thread


def _database_failed(exc: Exception) -> bool:
    """Whether `exc` is the database failing (not one row's value being unreadable)."""
    return isinstance(exc, DatabaseError) and not isinstance(exc, DataError)


def outbox_status(using: str = "default") -> OutboxStatus:
    """Pending and failed rows of the outbox on database `using`, and the oldest's age."""
    from leveret.django.models import OutboxMessage

    rows = OutboxMessage.objects.using(using).filter(sent_at__isnull=True)
    pending = rows.filter(failed_at__isnull=True)
    failed = rows.filter(failed_at__isnull=False)
    oldest = pending.aggregate(oldest=Min("created_at"))["oldest"]
    last_errors = tuple(  # the columns it shows only: a row's other values may be unreadable
        f"{message_id} {topic}: {error}"
        for message_id, topic, error in failed.order_by("-failed_at").values_list(
            "message_id", "topic", "last_error"
        )[:5]
    )
    return OutboxStatus(
        pending=pending.count(),
        failed=failed.count(),
        oldest_pending_age_s=(
            (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else None
        ),
        last_errors=last_errors,
    )


def retry_failed(using: str = "default") -> int:
    """Put every failed row of the outbox back, with fresh attempts; returns how many."""
    from leveret.django.models import OutboxMessage

    return int(
        OutboxMessage.objects.using(using)
        .filter(sent_at__isnull=True, failed_at__isnull=False)
        .update(failed_at=None, attempts=0, next_attempt_at=datetime.now(UTC))
    )


def _brokers_fault(error: LeveretError | None) -> bool:
    """Whether `error` is the broker's, not the row's: no confirm in time, or the broker
    could not be reached (nothing sent). Such a row waits for the relay's backoff without
    using up an attempt."""
    return isinstance(error, PublishTimeout | BrokerUnavailable)
