"""``manage.py leveret_dlq list|show|replay|purge QUEUE …``: `leveret dlq` with the
project's broker URL and namespace (``settings.LEVERET``), unless given as options."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from leveret.django.commandline import run_click


class Command(BaseCommand):
    """Runs the ``leveret dlq`` commands inside this Django process."""

    help = "Inspect and operate dead-letter queues (options: see leveret dlq --help)."

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the command line to ``leveret dlq`` as it is (minus Django's options)."""
        from leveret.services.cli.dlq import dlq

        run_click(dlq, argv[2:], prog_name="manage.py leveret_dlq")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("dlq_args", nargs="*", help="Arguments of leveret dlq.")

    def handle(self, *args: Any, **options: Any) -> None:
        from leveret.services.cli.dlq import dlq

        run_click(dlq, [*args, *options.get("dlq_args", [])], prog_name="manage.py leveret_dlq")
