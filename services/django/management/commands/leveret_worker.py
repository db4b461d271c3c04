"""``manage.py leveret_worker [MODULE…] [OPTIONS]``: `leveret worker` with Django set up.

Takes every option of ``leveret worker`` (``--threads``, ``--processes``, ``--queues``,
``--reload``, ``--health-port``…; see ``manage.py leveret_worker --help``, which shows the
values in force). The modules of ``LEVERET["ACTORS"]`` are run, plus any named on the
command line. The broker URL and the namespace come from ``settings.LEVERET`` unless given
as options. Database connections are closed around each message when stale, as Django
does around requests, and the project's ``LEVERET["MIDDLEWARE"]`` runs around it too.
With ``LEVERET["RELAY_IN_WORKER"]`` the outbox relay runs in this process too, started
once the command line is parsed.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from django.core.management.base import BaseCommand

from leveret.django.commandline import django_options, run_click
from leveret.django.project import worker_middleware
from leveret.django.registry import task_actors
from leveret.django.schedules import project_source
from leveret.django.settings import load
from leveret.services.operations.supervisor import READY_FD_ENV


class Command(BaseCommand):
    """Runs the Leveret worker's click command inside this Django process."""

    help = "Run a Leveret worker for the project's actors (options: see leveret worker)."

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the command line to ``leveret worker`` as it is (minus Django's options)."""
        script = argv[0] if argv else ""
        # `python -m django` runs django/__main__.py: children run `-m django` too.
        by_path = script.endswith(".py") and os.path.basename(script) != "__main__.py"
        run_worker(argv[2:], manage_py=os.path.abspath(script) if by_path else None)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("worker_args", nargs="*", help="Arguments of leveret worker.")

    def handle(self, *args: Any, **options: Any) -> None:
        run_worker([*args, *options.get("worker_args", [])])


def run_worker(args: list[str], *, manage_py: str | None = None) -> None:
    """Run ``leveret worker`` with the project's settings; exits the process when done."""
    from leveret.services.cli.worker import WorkerSetup, worker

    found = load()
    inherited = django_options(args)  # --settings/--pythonpath: the children's too

    def child_command(child_args: list[str]) -> list[str]:
        prefix = [manage_py] if manage_py else ["-m", "django"]
        return [
            *(sys.executable, *prefix, "leveret_worker", *child_args),
            *inherited,
            *("--processes", "1"),
        ]

    def before_start() -> None:
        # One relay per worker: in the supervisor of --processes N, not in its children.
        if found.relay_in_worker and READY_FD_ENV not in os.environ:
            _start_relay()

    run_click(
        worker,
        [*found.actors, *args],
        prog_name="manage.py leveret_worker",
        obj=WorkerSetup(
            middleware=worker_middleware,
            child_command=child_command,
            before_start=before_start,
            extra_actors=task_actors,
            schedules=project_source(),
        ),
    )


def _start_relay() -> None:
    from leveret.django.project import new_broker
    from leveret.django.registry import project_actors
    from leveret.django.relay import Relay

    found = load()
    relay = Relay(
        new_broker(found),
        using=found.database,
        actors=project_actors(),
        prune_after_s=found.outbox_prune_after_s,
        max_attempts=found.outbox_max_attempts,
    )
    relay.start(threading.Event())
