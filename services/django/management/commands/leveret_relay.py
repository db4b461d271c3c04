"""``manage.py leveret_relay``: publish the transactional outbox until stopped."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from leveret.actors import actors_in
from leveret.django.project import command_broker
from leveret.django.relay import Relay, outbox_status, retry_failed
from leveret.django.settings import load
from leveret.schemas.errors import LeveretError
from leveret.services.observability.logs import configure_logging


class Command(BaseCommand):
    """Runs one outbox relay; run several for redundancy (no row is sent twice)."""

    help = "Publish pending outbox messages with confirms; retries while the broker is down."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=100, help="Rows per transaction.")
        parser.add_argument(
            "--poll-interval", type=float, default=1.0, help="Seconds to wait when idle."
        )
        parser.add_argument(
            "--max-backoff", type=float, default=30.0, help="Longest wait between retries."
        )
        parser.add_argument("--once", action="store_true", help="Send what is pending, exit.")
        parser.add_argument(
            "--status",
            action="store_true",
            help="Show pending and failed rows and the oldest pending row's age, then exit.",
        )
        parser.add_argument(
            "--retry-failed",
            action="store_true",
            help="Put rows the relay gave up on back in the outbox, then exit.",
        )
        parser.add_argument("--log-level", default="info")
        parser.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])

    def handle(self, *args: Any, **options: Any) -> None:
        found = load()
        if options["status"] or options["retry_failed"]:
            self._inspect(found.database, retry=options["retry_failed"])
            return
        fmt = options["log_format"]
        configure_logging(options["log_level"], json=None if fmt == "auto" else fmt == "json")
        broker = command_broker()
        relay = Relay(
            broker,
            using=found.database,
            actors=list(actors_in(found.actors)),
            batch_size=options["batch_size"],
            poll_interval_s=options["poll_interval"],
            max_backoff_s=options["max_backoff"],
            prune_after_s=found.outbox_prune_after_s,
            max_attempts=found.outbox_max_attempts,
        )
        try:
            if options["once"]:
                try:
                    while relay.run_once():
                        pass
                except LeveretError as exc:
                    raise CommandError(f"{relay.sent} message(s) sent, then: {exc}") from exc
                relay.prune()
                self.stdout.write(f"{relay.sent} message(s) sent")
                return
            stop = threading.Event()
            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, lambda _s, _f: stop.set())
            relay.run(stop)
        finally:
            broker.close()

    def _inspect(self, database: str, *, retry: bool) -> None:
        # The database only: no broker connection is opened.
        if retry:
            self.stdout.write(f"{retry_failed(database)} failed row(s) put back in the outbox")
        status = outbox_status(database)
        age = status.oldest_pending_age_s
        self.stdout.write(f"pending: {status.pending}")
        self.stdout.write(f"failed: {status.failed}")
        self.stdout.write("oldest pending: " + ("-" if age is None else f"{age:.0f} s ago"))
        for line in status.last_errors:
            self.stdout.write(f"  failed {line}")
