"""Leveret in Django's admin (with ``django.contrib.admin`` installed): the outbox (what
waits, what failed and why, bodies readable, a "send now" action) and the schedule entries
kept in the database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from leveret.django.models import OutboxMessage, ScheduledMessage
from leveret.schemas.errors import LeveretError
from leveret.services.operations.deadletters import printable


class StateFilter(admin.SimpleListFilter):
    """Pending, failed or sent."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("pending", "pending"), ("failed", "failed"), ("sent", "sent")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> QuerySet[OutboxMessage]:
        if self.value() == "pending":
            return queryset.filter(sent_at__isnull=True, failed_at__isnull=True)
        if self.value() == "failed":
            return queryset.filter(sent_at__isnull=True, failed_at__isnull=False)
        if self.value() == "sent":
            return queryset.filter(sent_at__isnull=False)
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    """Read-only rows; the one thing to do with them is to send them now."""

    list_display = (
        "id",
        "state",
        "topic",
        "queue",
        "message_id",
        "attempts",
        "created_at",
        "sent_at",
        "short_error",
    )
    list_filter = (StateFilter, "topic")
    search_fields = ("message_id", "correlation_id", "topic", "queue")
    ordering = ("-id",)
    exclude = ("body", "headers")
    readonly_fields = (
        "state",
        "message_id",
        "correlation_id",
        "topic",
        "queue",
        "decoded_body",
        "decoded_headers",
        "delay_s",
        "timestamp",
        "group",
        "created_at",
        "attempts",
        "next_attempt_at",
        "last_error",
        "failed_at",
        "sent_at",
    )
    actions = ["send_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows are written by publishing, in the business transaction

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxMessage]:
        # Body and headers are read one row at a time, when shown: a row another program
        # wrote with headers Django cannot decode still lists, and shows what is wrong.
        return super().get_queryset(request).defer("body", "headers")

    @admin.display(description="state")
    def state(self, row: OutboxMessage) -> str:
        """pending, failed or sent."""
        return "sent" if row.sent_at else "failed" if row.failed_at else "pending"

    @admin.display(description="last error")
    def short_error(self, row: OutboxMessage) -> str:
        """The start of the last error."""
        return printable(row.last_error[:80])

    @admin.display(description="body")
    def decoded_body(self, row: OutboxMessage) -> SafeString:
        """The body as indented JSON, or as escaped text when it is not JSON."""
        try:
            raw = bytes(row.body)
        except Exception as exc:  # noqa: BLE001  # a value Django cannot read: say so
            return _unreadable(exc)
        try:
            text = json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
        except ValueError:
            text = raw.decode("utf-8", "backslashreplace")
        return format_html("<pre>{}</pre>", printable(text, keep_newlines=True))

    @admin.display(description="headers")
    def decoded_headers(self, row: OutboxMessage) -> SafeString:
        """The headers as indented JSON."""
        try:
            text = json.dumps(row.headers or {}, indent=2, ensure_ascii=False, default=str)
        except Exception as exc:  # noqa: BLE001  # a value Django cannot read: say so
            return _unreadable(exc)
        return format_html("<pre>{}</pre>", printable(text, keep_newlines=True))

    @admin.action(description="Send the selected messages now", permissions=["change"])
    def send_now(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        """Publish the selected rows not sent yet, failed ones too, whatever their backoff."""
        from leveret.django.publishing import current_broker
        from leveret.django.registry import project_actors
        from leveret.django.relay import Relay
        from leveret.django.settings import load

        found = load()
        ids = list(queryset.filter(sent_at__isnull=True).values_list("id", flat=True))
        if not ids:
            self.message_user(request, "Nothing to send: every selected row was sent.")
            return
        relay = Relay(
            current_broker(),
            using=found.database,
            actors=project_actors(),
            max_attempts=found.outbox_max_attempts,
        )
        try:
            sent = relay.send_now(ids)
        except LeveretError as exc:
            self.message_user(request, f"Nothing sent: {exc}", level=messages.ERROR)
            return
        left = len(ids) - sent
        if left:
            self.message_user(
                request,
                f"{sent} message(s) sent; {left} not sent (see their last error).",
                level=messages.WARNING,
            )
        else:
            self.message_user(request, f"{sent} message(s) sent.")


def _unreadable(exc: Exception) -> SafeString:
    return format_html("<pre>unreadable: {}</pre>", printable(f"{type(exc).__name__}: {exc}"[:500]))


@admin.register(ScheduledMessage)
class ScheduledMessageAdmin(admin.ModelAdmin):
    """Schedule entries kept in the database: the leading scheduler picks up a change
    (added, disabled, another expression) within seconds, without a restart."""

    list_display = (
        "name",
        "enabled",
        "when",
        "timezone",
        "topic",
        "actor",
        "catch_up",
        "next_run",
        "updated_at",
    )
    list_editable = ("enabled",)
    list_filter = ("enabled", "catch_up")
    search_fields = ("name", "topic", "actor")
    readonly_fields = ("updated_at", "next_runs")
    actions = ["enable", "disable"]

    @admin.display(description="when")
    def when(self, row: ScheduledMessage) -> str:
        """The cron expression or the interval."""
        return row.cron or f"every {row.every_seconds} s"

    @admin.display(description="next run")
    def next_run(self, row: ScheduledMessage) -> str:
        """The next tick (UTC), or why there is none."""
        runs = self._runs(row, 1)
        return runs[0] if runs else "-"

    @admin.display(description="next runs")
    def next_runs(self, row: ScheduledMessage) -> SafeString:
        """The next five ticks, or what is wrong with the entry."""
        return format_html("<pre>{}</pre>", "\n".join(self._runs(row, 5)) or "-")

    def _runs(self, row: ScheduledMessage, count: int) -> list[str]:
        if row.pk is None:
            return []
        try:
            entry = row.to_schedule()
        except (LeveretError, ValueError, TypeError) as exc:
            return [f"invalid: {exc}"]
        return [tick.isoformat() for tick in entry.next_runs(datetime.now(UTC), count)]

    @admin.action(description="Enable the selected schedules", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[ScheduledMessage]) -> None:
        """Turn them on (the leader sends their ticks from the next one on)."""
        self.message_user(request, f"{queryset.update(enabled=True)} schedule(s) enabled.")

    @admin.action(description="Disable the selected schedules", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[ScheduledMessage]) -> None:
        """Turn them off (their stored last tick is kept)."""
        self.message_user(request, f"{queryset.update(enabled=False)} schedule(s) disabled.")
