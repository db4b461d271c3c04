"""``manage.py leveret_scheduler [--list]``: `leveret scheduler` with the project's settings.

Runs the schedules of the modules of ``LEVERET["ACTORS"]`` (their `periodic` actors) and
``LEVERET["SCHEDULES"]``, and the entries of the database (editable in the admin; the
leader reads them again every few seconds). Any number may run; one leads.
``manage.py leveret_worker --scheduler`` runs the same inside a worker.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from leveret.django.commandline import run_click
from leveret.django.schedules import project_source
from leveret.django.settings import load


class Command(BaseCommand):
    """Runs the Leveret scheduler's click command inside this Django process."""

    help = "Send the ticks of the project's schedules (options: see leveret scheduler)."

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the command line to ``leveret scheduler`` (minus Django's options)."""
        run(argv[2:])

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("scheduler_args", nargs="*", help="Arguments of leveret scheduler.")

    def handle(self, *args: Any, **options: Any) -> None:
        run([*args, *options.get("scheduler_args", [])])


def run(args: list[str]) -> None:
    """Run ``leveret scheduler`` with the project's settings; exits the process when done."""
    from leveret.services.cli.scheduler import scheduler

    found = load()
    run_click(
        scheduler,
        [*found.actors, *args],
        prog_name="manage.py leveret_scheduler",
        obj=project_source(),
    )
