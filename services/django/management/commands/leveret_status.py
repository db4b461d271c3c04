"""``manage.py leveret_status``: `leveret status` with the project's broker URL, namespace
and actors (``settings.LEVERET``), unless given as options, and warnings about the outbox
(rows waiting longer than ``OUTBOX_WARN_AFTER_S``, rows the relay gave up on)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    """Runs ``leveret status`` inside this Django process, showing the project's actors."""

    help = "Workers, queues and warnings of the project's namespace (see leveret status --help)."

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the command line to ``leveret status`` as it is (minus Django's options)."""
        self._run(argv[2:])

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("status_args", nargs="*", help="Arguments of leveret status.")

    def handle(self, *args: Any, **options: Any) -> None:
        self._run([*args, *options.get("status_args", [])])

    def _run(self, args: list[str]) -> None:
        from leveret.django.backlog import backlog_warnings
        from leveret.django.commandline import run_click
        from leveret.django.registry import project_actors
        from leveret.services.cli.status import StatusSetup, status

        run_click(
            status,
            args,
            prog_name="manage.py leveret_status",
            obj=StatusSetup(project_actors, warnings=backlog_warnings),
        )
