"""``manage.py leveret_worker [MODULE…] [OPTIONS]``: `leveret worker` with Django set up.

Takes every option of ``leveret worker`` (``--threads``, ``--processes``, ``--queues``,
``--health-port``…; see ``manage.py leveret_worker --help``). The modules of
``LEVERET["ACTORS"]`` are run, plus any named on the command line. The broker URL and the
namespace come from ``settings.LEVERET`` unless given as options. Database connections are
closed around each message when stale, as Django does around requests. With
``LEVERET["RELAY_IN_WORKER"]`` the outbox relay runs in this process too.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from django.core.management.base import BaseCommand

from leveret.django.hooks import CloseOldConnections
from leveret.django.settings import load
from leveret.services import config

_DJANGO_OPTIONS = ("--settings", "--pythonpath")


class Command(BaseCommand):
    """Runs the Leveret worker's click command inside this Django process."""

    help = "Run a Leveret worker for the project's actors (options: see leveret worker)."

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the command line to ``leveret worker`` as it is (minus Django's options)."""
        manage_py = os.path.abspath(argv[0]) if argv and argv[0].endswith(".py") else None
        run_worker(strip_django_options(argv[2:]), manage_py=manage_py)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("worker_args", nargs="*", help="Arguments of leveret worker.")

    def handle(self, *args: Any, **options: Any) -> None:
        run_worker([*args, *options.get("worker_args", [])])


def strip_django_options(args: list[str]) -> list[str]:
    """`args` without ``--settings``/``--pythonpath`` (Django's own, handled already)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in _DJANGO_OPTIONS:
            skip = True
            continue
        if arg.startswith(tuple(f"{option}=" for option in _DJANGO_OPTIONS)):
            continue
        kept.append(arg)
    return kept


def run_worker(args: list[str], *, manage_py: str | None = None) -> None:
    """Run ``leveret worker`` with the project's settings; exits the process when done."""
    from leveret.services.cli.worker import WorkerSetup, worker

    found = load()
    # Settings win over the environment here, as they do for publishing; the options
    # still win over both. Children of --processes N inherit them through the environment.
    os.environ[config.BROKER_URL_ENV] = found.broker_url
    os.environ[config.NAMESPACE_ENV] = found.namespace
    if found.relay_in_worker and os.environ.get("LEVERET_RELAY_CHILD") != "1":
        _start_relay()
        os.environ["LEVERET_RELAY_CHILD"] = "1"  # children of a supervisor don't start one

    def child_command(child_args: list[str]) -> list[str]:
        prefix = [manage_py] if manage_py else ["-m", "django"]
        return [sys.executable, *prefix, "leveret_worker", *child_args, "--processes", "1"]

    worker.main(
        [*found.actors, *args],
        prog_name="manage.py leveret_worker",
        obj=WorkerSetup(hooks=[CloseOldConnections()], child_command=child_command),
    )


def _start_relay() -> None:
    from leveret.actors import actors_in
    from leveret.django.apps import build_broker
    from leveret.django.relay import Relay

    found = load()
    relay = Relay(
        build_broker(),
        using=found.database,
        actors=list(actors_in(found.actors)),
        prune_after_s=found.outbox_prune_after_s,
    )
    relay.start(threading.Event())
