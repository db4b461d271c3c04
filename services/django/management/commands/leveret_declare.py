"""``manage.py leveret_declare``: declare the project's actors (exchanges, queues, bindings).

Run it at deploy time before the new code publishes (``migrate`` does it too, unless
``LEVERET["DECLARE_ON_MIGRATE"]`` is False): a new actor's queue then exists, bound to its
topics, and collects every message published from then on, even before its first worker
starts. Idempotent; exits non-zero if the broker is unreachable or refuses a declaration.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from leveret.django.project import command_broker
from leveret.django.receivers import DECLARE_TIMEOUT_S
from leveret.django.registry import project_actors
from leveret.django.settings import load
from leveret.schemas.errors import LeveretError


class Command(BaseCommand):
    """Declares the topology of ``LEVERET["ACTORS"]`` on the project's broker."""

    help = "Declare the exchanges, queues and bindings of the project's actors (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=DECLARE_TIMEOUT_S,
            help=f"Seconds to wait for the broker (default {DECLARE_TIMEOUT_S:g}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        found = load()
        if found.problems:
            raise CommandError("; ".join(found.problems) + " (manage.py check says more)")
        try:
            actors = project_actors()
            if not actors:
                raise CommandError(
                    'no actors to declare: list the modules that define them in LEVERET["ACTORS"]'
                )
            broker = command_broker()
            broker.check_available(timeout=options["timeout"])
            broker.declare(*actors)
        except LeveretError as exc:
            raise CommandError(str(exc)) from exc
        for actor in actors:
            self.stdout.write(
                f"declared {broker.namespace}.{actor.queue} <- {', '.join(actor.topics())}"
            )
