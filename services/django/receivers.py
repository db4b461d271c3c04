"""What the app does when Django says something happened: settings changed, migrate ran."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.management.base import CommandError
from django.core.signals import setting_changed
from django.db.models.signals import post_migrate

from leveret.schemas.errors import LeveretError
from leveret.services.observability.logs import get_logger

log = get_logger("leveret.django")

DECLARE_TIMEOUT_S = 10.0
"""How long ``migrate`` waits for the broker before it fails."""


def connect(app_config: AppConfig) -> None:
    """Connect the app's receivers (once; Django may call `ready` again in tests)."""
    setting_changed.connect(settings_changed, dispatch_uid="leveret.settings_changed")
    post_migrate.connect(
        declare_after_migrate, sender=app_config, dispatch_uid="leveret.declare_after_migrate"
    )


def settings_changed(*, setting: str, **_kwargs: Any) -> None:
    """``LEVERET`` changed (a test's ``override_settings``): read it again at next use."""
    if setting == "LEVERET":
        from leveret.django.settings import forget

        forget()


def declare_after_migrate(*, using: str, verbosity: int = 1, **kwargs: Any) -> None:
    """Declare the project's actors after ``migrate``, so that a new actor's queue exists
    (and collects its messages) before the new code publishes to its topic.

    Skipped with ``LEVERET["DECLARE_ON_MIGRATE"] = False``, and when the settings are
    wrong (``check`` says why).

    Raises:
        CommandError: The broker is unreachable or refused a declaration: ``migrate``
            exits non-zero, so a deploy stops before publishing to queues that do not exist.
    """
    from leveret.django.project import project_broker
    from leveret.django.registry import project_actors
    from leveret.django.settings import load

    found = load()
    if not found.declare_on_migrate or found.problems:
        return
    try:
        actors = project_actors()
        if not actors:
            return
        broker = project_broker()
        broker.check_available(timeout=DECLARE_TIMEOUT_S)
        broker.declare(*actors)
    except LeveretError as exc:
        raise CommandError(
            f"Leveret could not declare the actors' queues after migrate: {exc}. Start the "
            "broker and run `manage.py leveret_declare` (or migrate again) before the new "
            'code publishes; LEVERET["DECLARE_ON_MIGRATE"] = False turns this off.'
        ) from exc
    log.info("topology_declared", queues=[actor.queue for actor in actors], broker=repr(broker))
    if verbosity >= 1:
        stdout = kwargs.get("stdout")
        if stdout is not None:
            names = ", ".join(actor.queue for actor in actors)
            stdout.write(f"Leveret: declared {len(actors)} actor queue(s): {names}\n")
