"""The outbox table: messages written in the business transaction, published by the relay."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import models
from django.utils import timezone

from leveret.schemas.envelope import Envelope
from leveret.services.broker import Prepared, Route


class OutboxMessage(models.Model):
    """One message waiting in the outbox (or sent, until pruned).

    It holds everything needed to publish the very same message later: id, correlation id,
    topic, route, body, headers, delay and timestamp. ``group`` identifies the transaction
    that wrote it; the relay keeps each group's messages in ``id`` order. ``attempts``,
    ``last_error`` and ``next_attempt_at`` record the broker's refusals; ``failed_at`` is
    set once the relay gave up on the row.
    """

    id = models.BigAutoField(primary_key=True)
    message_id = models.CharField(max_length=64, db_index=True)
    correlation_id = models.CharField(max_length=255, null=True, blank=True)
    topic = models.CharField(max_length=255)
    queue = models.CharField(max_length=255, null=True, blank=True)
    body = models.BinaryField()
    headers = models.JSONField(default=dict)
    delay_s = models.IntegerField(default=0)
    timestamp = models.DateTimeField()
    group = models.CharField(max_length=32, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True, default="")
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "leveret_outbox"
        indexes = [models.Index(fields=["sent_at", "next_attempt_at", "id"])]

    def __str__(self) -> str:
        state = "sent" if self.sent_at else "failed" if self.failed_at else "pending"
        return f"{self.topic} {self.message_id} ({state})"

    @classmethod
    def of(cls, item: Prepared, group: str) -> OutboxMessage:
        """An unsaved row for a prepared message."""
        return cls(
            message_id=item.envelope.message_id,
            correlation_id=item.envelope.correlation_id,
            topic=item.route.topic,
            queue=item.route.queue,
            body=item.body,
            headers=dict(item.envelope.headers),
            delay_s=item.delay_s,
            timestamp=item.envelope.timestamp,
            group=group,
        )

    def prepared(self, now: datetime | None = None) -> Prepared:
        """The message as it was prepared; a delay counts from when the row was written."""
        now = now or datetime.now(UTC)
        remaining = 0
        if self.delay_s > 0:
            elapsed = (now - self.created_at).total_seconds()
            remaining = max(0, self.delay_s - int(elapsed))
        return Prepared(
            Envelope(
                message_id=self.message_id,
                topic=self.topic,
                correlation_id=self.correlation_id,
                timestamp=self.timestamp,
                headers=dict(self.headers or {}),
            ),
            bytes(self.body),
            Route(self.topic, queue=self.queue),
            remaining,
        )
