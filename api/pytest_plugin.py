"""Leveret's pytest plugin: fixtures that make tests publish as production does.

Installed with Leveret, pytest loads it by itself (``-p no:leveret`` turns it off).

Fixtures:

- ``leveret_broker``: a fresh in-memory broker (`MemoryBroker`) with ``leveret_actors``
  declared, configured as the process's broker for the test. ``broker.join()`` handles
  everything published, in the test's thread. In a Django project it follows the
  transactions as production does: `publish`, `Actor.send` and the `leveret.django`
  helpers send at commit and nothing after a rollback, and with the outbox they write
  rows, which ``join`` relays once committed; and it runs the code's schedules
  (``LEVERET["SCHEDULES"]``, periodic actors of ``ACTORS``) on its virtual clock:
  ``broker.advance_clock(seconds)`` sends the ticks due meanwhile.
- ``leveret_eager``: the same, but each message is handled as soon as it is published (at
  commit inside a transaction), like Celery's ``task_always_eager``; a handler's exception
  that would dead-letter the message is raised there. Simpler tests, less like production:
  handlers run inside the caller's call, and nothing is ever seen waiting.
- ``leveret_actors``: the actors those two declare: ``LEVERET["ACTORS"]``'s in a Django
  project, else every actor imported so far. Override it in a ``conftest.py`` to choose.

In a Django project, every test also starts with an empty project broker when tests use
``memory://`` (``LEVERET["TEST_BROKER_URL"]``, the default), and the session header says
where the project publishes during tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from leveret.actors.actor import Actor
    from leveret.services.testing import MemoryBroker


def _django_app_ready() -> bool:
    """Whether Django is set up with ``leveret.django`` installed (never imports Django)."""
    if "django.apps" not in sys.modules or "django.conf" not in sys.modules:
        return False
    from django.apps import apps
    from django.conf import settings

    return bool(settings.configured) and apps.ready and apps.is_installed("leveret.django")


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say where the Django project publishes while the tests run."""
    if not _django_app_ready():
        return None
    from leveret.django.settings import load
    from leveret.services.observability.redaction import redact

    found = load()
    if found.test_broker_url is not None:
        where = f"{redact(found.test_broker_url)} (LEVERET['TEST_BROKER_URL'])"
    else:
        where = f"{redact(found.broker_url)} (LEVERET['BROKER_URL']: the real broker)"
    return f"leveret: Django publishes to {where}, namespace {found.namespace!r}"


@pytest.fixture(autouse=True)
def _leveret_fresh_project_broker() -> None:
    """Each test starts with an empty in-memory project broker (Django projects)."""
    if _django_app_ready():
        from leveret.django.project import forget_project_broker

        forget_project_broker(memory_only=True)


@pytest.fixture
def leveret_actors() -> list[type[Actor]]:
    """The actors `leveret_broker` and `leveret_eager` declare; override to choose."""
    if _django_app_ready():
        from leveret.django.registry import project_actors

        return project_actors()
    from leveret.actors.registry import imported_actors

    return imported_actors()


def _broker(actors: list[type[Actor]], *, eager: bool) -> Iterator[MemoryBroker]:
    from leveret.actors.registry import unique_queues
    from leveret.schemas.errors import DefinitionError

    try:
        unique_queues(actors)
    except DefinitionError as exc:
        raise pytest.UsageError(
            f"{exc}: override the leveret_actors fixture to declare the actors this test needs"
        ) from exc
    if _django_app_ready():
        from leveret.django.testing import project_memory_broker

        with project_memory_broker(*actors, eager=eager) as broker:
            yield broker
        return
    from leveret.services.testing import memory_broker

    with memory_broker(*actors, eager=eager) as broker:
        yield broker


@pytest.fixture
def leveret_broker(leveret_actors: list[type[Actor]]) -> Iterator[MemoryBroker]:
    """A fresh in-memory broker configured for the test; ``join()`` handles what waits."""
    yield from _broker(leveret_actors, eager=False)


@pytest.fixture
def leveret_eager(leveret_actors: list[type[Actor]]) -> Iterator[MemoryBroker]:
    """An in-memory broker that handles each message as soon as it is published."""
    yield from _broker(leveret_actors, eager=True)
