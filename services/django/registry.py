"""The project's actors: those of ``LEVERET["ACTORS"]``, and the task queues of a
`leveret.django.tasks.LeveretBackend` in ``settings.TASKS``."""

from __future__ import annotations

from leveret.actors.actor import Actor
from leveret.actors.registry import actors_in, unique_queues
from leveret.django.settings import TASKS_BACKEND, load


def project_actors() -> list[type[Actor]]:
    """The actors of the project: those defined in the modules of ``LEVERET["ACTORS"]``,
    and the task queues of a `leveret.django.tasks.LeveretBackend` in ``settings.TASKS``.

    Raises:
        ConfigurationError: A module does not import, or two actors share a queue.
    """
    tasks = task_actors()
    actors = actors_in(load().actors)
    return unique_queues([*actors, *tasks]) if tasks else actors


def task_actors() -> list[type[Actor]]:
    """The actors running Django's tasks: the queues of each `LeveretBackend` configured in
    ``settings.TASKS`` (none without one)."""
    from django.conf import settings

    backends = getattr(settings, "TASKS", None) or {}
    if not any(params.get("BACKEND") == TASKS_BACKEND for params in backends.values()):
        return []
    from leveret.django.tasks import configured_task_actors

    return configured_task_actors()
