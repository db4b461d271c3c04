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

Order: rows are published in ``id`` order; rows of one transaction (a group) wait while an
earlier row of the same group is unsent (held by another relay, or in backoff).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from django.db import close_old_connections, connections, transaction

from actors.actor import ActorRef
from schemas.errors import LeveretError
from services.broker import Broker
from services.logs import get_logger

if TYPE_CHECKING:
    from services.django.models import OutboxMessage as OutboxMessageType

log = get_logger("leveret.relay")


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
    """

    def __init__(
        self,
        broker: Broker,
        *,
        using: str = "default",
        actors: tuple[ActorRef, ...] | list[ActorRef] = (),
        batch_size: int = 100,
        poll_interval_s: float = 1.0,
        max_backoff_s: float = 30.0,
        prune_after_s: float | None = 7 * 24 * 3600.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.broker = broker
        self.using = using
        self.actors = list(actors)
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self.prune_after_s = prune_after_s
        self.sent = 0
        self._declared = not self.actors
        self._failures = 0
        self._last_prune = 0.0

    def backoff_s(self, failures: int) -> float:
        """Pause after `failures` failed batches in a row: 0.5 s doubling, capped."""
        return float(min(self.max_backoff_s, 0.5 * 2 ** max(0, failures - 1)))

    def run_once(self) -> int:
        """Publish one batch; return how many rows were sent.

        Raises:
            LeveretError: The broker did not confirm (the rows stay pending, with their
                next attempt pushed back).
        """
        from services.django.models import OutboxMessage

        failure: LeveretError | None = None
        with transaction.atomic(using=self.using):
            rows = self._lock_batch()
            if not rows:
                return 0
            now = datetime.now(UTC)
            try:
                if not self._declared:
                    self.broker.declare(*self.actors)
                    self._declared = True
                self.broker.publish_prepared([row.prepared(now) for row in rows])
            except LeveretError as exc:
                failure = exc
                self._failures += 1
                OutboxMessage.objects.using(self.using).filter(
                    id__in=[row.id for row in rows]
                ).update(
                    next_attempt_at=now + timedelta(seconds=self.backoff_s(self._failures)),
                    last_error=str(exc)[:2000],
                )
            else:
                self._failures = 0
                OutboxMessage.objects.using(self.using).filter(
                    id__in=[row.id for row in rows]
                ).update(sent_at=datetime.now(UTC))
        if failure is not None:
            raise failure
        self.sent += len(rows)
        return len(rows)

    def _lock_batch(self) -> list[OutboxMessageType]:
        from services.django.models import OutboxMessage

        connection = connections[self.using]
        pending = (
            OutboxMessage.objects.using(self.using)
            .filter(sent_at__isnull=True, next_attempt_at__lte=datetime.now(UTC))
            .order_by("id")
        )
        if connection.features.has_select_for_update_skip_locked:
            rows = list(pending.select_for_update(skip_locked=True)[: self.batch_size])
        else:
            # SQLite: a write first takes the database's write lock for this transaction,
            # so no other relay reads the same pending rows until this one commits.
            with connection.cursor() as cursor:
                table = connection.ops.quote_name(OutboxMessage._meta.db_table)
                cursor.execute(f"UPDATE {table} SET attempts = attempts WHERE 1 = 0")  # noqa: S608
            rows = list(pending[: self.batch_size])
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
            .filter(sent_at__isnull=True, group__in=list(first), id__lt=max(first.values()))
            .values_list("group", "id")
            if row_id < first[group]
        }
        return [row for row in rows if row.group not in blocked]

    def prune(self) -> int:
        """Delete sent rows older than `prune_after_s`; return how many."""
        from services.django.models import OutboxMessage

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
