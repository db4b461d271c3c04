"""Message hooks of the Django worker."""

from __future__ import annotations

from django.db import close_old_connections, reset_queries

from leveret.schemas.envelope import Envelope
from leveret.services.delivery import Outcome


class CloseOldConnections:
    """Treat each message like a request: close stale database connections around it.

    Django closes connections past ``CONN_MAX_AGE`` or left unusable (a restarted database)
    when a request starts and ends; a worker thread handles messages for hours, so it does
    the same around each message.
    """

    def before_message(self, envelope: Envelope) -> None:
        """Forget the query log and close stale connections before the handler runs."""
        reset_queries()
        close_old_connections()

    def after_message(self, envelope: Envelope, outcome: Outcome) -> None:
        """Close stale connections (and any left in a broken state) after the handler."""
        close_old_connections()
