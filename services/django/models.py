"""Leveret's tables: the outbox (messages written in the business transaction, published by
the relay) and the schedule entries kept in the database."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import models
from django.utils import timezone

from leveret.actors.schedules import Schedule
from leveret.schemas.envelope import Envelope
from leveret.schemas.errors import InvalidArgument
from leveret.services.broker import OutgoingMessage, Route


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
    def of(cls, item: OutgoingMessage, group: str) -> OutboxMessage:
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

    def prepared(self, now: datetime | None = None) -> OutgoingMessage:
        """The message as it was prepared; a delay counts from when the row was written.

        The row may have been written by anyone with access to the table: the relay checks
        what this returns (`leveret.django.outbox.check_buildable`) before publishing it.

        Raises:
            InvalidArgument: The headers are not a table.
        """
        now = now or datetime.now(UTC)
        remaining = self.delay_s
        if isinstance(self.delay_s, int) and self.delay_s > 0:
            elapsed = (now - self.created_at).total_seconds()
            remaining = max(0, self.delay_s - int(elapsed))
        headers = self.headers if self.headers is not None else {}
        if not isinstance(headers, dict):
            raise InvalidArgument(
                f"outbox row {self.id}: its headers must be a table (a JSON object of text "
                f"keys), not {type(headers).__name__}"
            )
        return OutgoingMessage(
            Envelope(
                message_id=self.message_id,
                topic=self.topic,
                correlation_id=self.correlation_id,
                timestamp=self.timestamp,
                headers=dict(headers),
            ),
            bytes(self.body),
            Route(self.topic, queue=self.queue),
            remaining,
        )


class ScheduledMessage(models.Model):
    """A schedule entry kept in the database: editable in the admin, picked up by the
    leading scheduler within seconds, without a restart.

    It sends the message of `topic` built from `payload` (validated like any message), to
    the actor of queue `actor`, or by topic when that is empty; on `cron` (five fields,
    in `timezone`) or every `every_seconds`.
    """

    CATCH_UP_CHOICES = [
        ("skip", "skip: ticks missed while no scheduler ran are not sent"),
        ("latest", "latest: only the last missed tick is sent"),
        ("all", "all: every missed tick is sent (up to max catch-up)"),
    ]

    name = models.CharField(max_length=200, unique=True)
    enabled = models.BooleanField(default=True)
    cron = models.CharField(
        max_length=200, blank=True, default="", help_text="e.g. 30 2 * * * (or every seconds)"
    )
    every_seconds = models.PositiveIntegerField(null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC", help_text="e.g. Europe/Berlin")
    topic = models.CharField(max_length=255, help_text="the topic of the message to send")
    payload = models.JSONField(default=dict, blank=True, help_text="the message's fields")
    actor = models.CharField(
        max_length=170,
        blank=True,
        default="",
        help_text="send to this actor's queue; empty: publish by topic",
    )
    catch_up = models.CharField(max_length=10, choices=CATCH_UP_CHOICES, default="skip")
    max_catch_up = models.PositiveIntegerField(default=100)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "leveret_scheduled_message"
        ordering = ["name"]

    def __str__(self) -> str:
        return str(self.name)

    def clean(self) -> None:
        """Check the entry as the scheduler will use it (the admin shows what is wrong): a
        name the code's schedules use is refused, since the scheduler would ignore it."""
        from django.core.exceptions import ValidationError

        from leveret.schemas.errors import LeveretError

        taken = code_schedule_named(str(self.name))
        if taken is not None:
            raise ValidationError(
                {
                    "name": (
                        f"the code has a schedule named {taken.name!r} (in {taken.module}: "
                        f"{taken.when}): the scheduler runs that one and would ignore this "
                        "entry; choose another name"
                    )
                }
            )
        try:
            self.to_schedule()
        except (LeveretError, ValueError, TypeError) as exc:
            raise ValidationError(str(exc)) from exc

    def to_schedule(self) -> Schedule:
        """The entry as a `Schedule`.

        Raises:
            DefinitionError: A bad expression, zone, topic, payload or actor.
        """
        from leveret.actors.schedules import Schedule, check_schedule, cron, every
        from leveret.django.registry import project_actors
        from leveret.schemas.errors import DefinitionError
        from leveret.schemas.message import message_class

        if bool(self.cron) == (self.every_seconds is not None):
            raise DefinitionError(
                f"schedule {self.name!r}: give a cron expression or an interval, not both"
            )
        when = (
            cron(self.cron, tz=self.timezone)
            if self.cron
            else every(seconds=int(self.every_seconds or 0))
        )
        actors = {actor.queue: actor for actor in project_actors()}
        kind = message_class(self.topic)
        if kind is None:
            raise DefinitionError(
                f"schedule {self.name!r}: no message class has topic {self.topic!r} (is its "
                "module in LEVERET['ACTORS'] or LEVERET['SCHEDULES']?)"
            )
        try:
            message = kind.model_validate(self.payload or {})
        except ValueError as exc:
            raise DefinitionError(f"schedule {self.name!r}: payload: {exc}") from exc
        target = None
        if self.actor:
            target = actors.get(self.actor)
            if target is None:
                raise DefinitionError(
                    f"schedule {self.name!r}: no actor of LEVERET['ACTORS'] has queue "
                    f"{self.actor!r}"
                )
        return check_schedule(
            Schedule(
                self.name,
                when,
                message,
                target,
                self.catch_up,
                self.max_catch_up,
                module="database",
            )
        )


def code_schedule_named(name: str) -> Schedule | None:
    """The schedule of the code (``LEVERET["ACTORS"]``' `periodic` actors and
    ``LEVERET["SCHEDULES"]``) named `name`, if any; None too when those do not import
    (``check`` reports that)."""
    from leveret.actors.schedules import schedules_in
    from leveret.django.settings import load
    from leveret.schemas.errors import LeveretError

    found = load()
    try:
        entries = schedules_in([*found.actors, *found.schedules])
    except LeveretError:
        return None
    return next((entry for entry in entries if entry.name == name), None)
