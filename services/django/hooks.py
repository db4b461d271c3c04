"""Middleware of the Django worker: database connections handled as around a request."""

from __future__ import annotations

from django.db import close_old_connections, reset_queries

from leveret.schemas.envelope import Envelope
from leveret.services.delivery import Outcome
from leveret.services.middleware import Middleware


class CloseOldConnections(Middleware):
    """Treat each message like a request: close stale database connections around it.

    Django closes connections past ``CONN_MAX_AGE`` or left unusable (a restarted database)
    when a request starts and ends; a worker thread handles messages for hours, so it does
    the same around each message. ``manage.py leveret_worker`` and the project's broker
    (`leveret.django.project`) run it first among the project's middleware.
    """

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        """Forget the query log and close stale connections before the handler runs."""
        reset_queries()
        close_old_connections()

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        """Close stale connections (and any left in a broken state) after the handler."""
        close_old_connections()
