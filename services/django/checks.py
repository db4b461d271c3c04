"""System checks: what would lose messages is reported by ``manage.py check`` (and by
``runserver`` and ``migrate``), not found in production.

Errors (the settings are wrong): ``leveret.E001`` a ``LEVERET`` value, ``leveret.E002`` an
actor or schedule module that does not import, ``leveret.E003`` an unknown database alias,
``leveret.E004`` a ``MIDDLEWARE`` entry that does not import or is no `Middleware`.

Warnings (the settings work, and lose messages):

- ``leveret.W001``: no ``LEVERET`` setting at all: the project publishes to the default
  broker (localhost) in namespace ``leveret``, which is rarely what was meant;
- ``leveret.W002``: a module the project imports defines actors but is not in
  ``LEVERET["ACTORS"]``: no ``leveret_worker`` consumes their queues, which fill up;
- ``leveret.W003``: handlers of the project's actors without a time limit, and
  ``leveret.W004`` handlers whose limit is not below the broker's consumer timeout
  (``CONSUMER_TIMEOUT_S``): one warning each, naming every such handler;
- ``leveret.W005``: outbox rows have waited longer than ``OUTBOX_WARN_AFTER_S`` (no relay
  runs, or it cannot publish), and ``leveret.W006``: rows the relay gave up on, for a
  project that uses the outbox. The database is read within a few seconds at most
  (`leveret.django.backlog`); when it cannot be, these two say nothing.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register

from leveret.actors.actor import Actor
from leveret.actors.registry import imported_actors
from leveret.django.settings import load, load_middleware
from leveret.schemas.errors import LeveretError
from leveret.services.observability.logs import get_logger
from leveret.services.observability.redaction import redact
from leveret.services.runtime.timelimits import handlers_over_limits

log = get_logger("leveret.django")

_SETTINGS_HINT = (
    "Every LEVERET key, its default and its meaning: python -m pydoc "
    "leveret.django.settings (or docs/django.md, section Settings, in the Leveret repository)."
)

_MIDDLEWARE_HINT = (
    "LEVERET['MIDDLEWARE'] lists dotted paths to leveret.Middleware subclasses (made with "
    "no arguments) or instances, e.g. ['myproject.audit.AuditMiddleware']; see "
    "docs/middleware.md."
)


@register("leveret")
def check_settings(app_configs: Any = None, **_kwargs: Any) -> list[CheckMessage]:
    """Check the ``LEVERET`` dict: known keys, types, URL scheme, namespace, actor modules.

    Returns:
        One error (``leveret.E001``) per problem, ``leveret.E002`` per actor module that
        does not import, ``leveret.E003`` for an unknown database alias, ``leveret.E004``
        per middleware entry that does not import or names no `Middleware`.
    """
    from django.db import connections

    found = load()
    errors: list[CheckMessage] = [
        Error(problem, hint=_SETTINGS_HINT, id="leveret.E001") for problem in found.problems
    ]
    for key, modules in (("ACTORS", found.actors), ("SCHEDULES", found.schedules)):
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001  # any import failure is the finding
                errors.append(
                    Error(
                        f"LEVERET[{key!r}] names {module!r}, which cannot be imported: {exc!r}",
                        id="leveret.E002",
                    )
                )
    for path in found.middleware:
        try:
            load_middleware(path)
        except LeveretError as exc:
            errors.append(Error(str(exc), hint=_MIDDLEWARE_HINT, id="leveret.E004"))
    if found.database not in connections.settings:
        errors.append(
            Error(
                f"LEVERET['DATABASE'] is {found.database!r}, which is not in DATABASES",
                id="leveret.E003",
            )
        )
    return errors


@register("leveret")
def check_message_traps(app_configs: Any = None, **_kwargs: Any) -> list[CheckMessage]:
    """Warn about settings that work and lose messages (see the module's list).

    Returns:
        ``leveret.W001`` … ``leveret.W004`` warnings.
    """
    from leveret.django.registry import project_actors

    found = load()
    warnings: list[CheckMessage] = []
    if not found.configured:
        warnings.append(
            Warning(
                f"settings.LEVERET is not set: the project publishes to "
                f"{redact(found.broker_url)} in namespace {found.namespace!r}",
                hint='Set LEVERET = {"BROKER_URL": ..., "NAMESPACE": ..., "ACTORS": [...]}.',
                id="leveret.W001",
            )
        )
    try:
        actors = project_actors()
    except LeveretError:
        return warnings  # E002 says why
    warnings.extend(_actors_outside_settings(actors))
    missing, too_long = handlers_over_limits(actors, consumer_timeout_s=found.consumer_timeout_s)
    if missing:
        warnings.append(
            Warning(
                f"{len(missing)} handler(s) have no time limit: {', '.join(missing)}. One "
                "that runs past the broker's consumer timeout makes RabbitMQ close the "
                "worker's channel and deliver everything in flight again.",
                hint="Set time_limit_s on the actor, or @handler(time_limit_s=...), below "
                f"LEVERET['CONSUMER_TIMEOUT_S'] ({found.consumer_timeout_s:g} s).",
                id="leveret.W003",
            )
        )
    if too_long:
        warnings.append(
            Warning(
                f"{len(too_long)} handler(s) have a time limit not below the broker's "
                f"consumer timeout ({found.consumer_timeout_s:g} s): {', '.join(too_long)}. "
                "RabbitMQ gives up on the delivery before the limit interrupts the handler.",
                hint="Lower time_limit_s, or raise consumer_timeout on the broker and "
                "LEVERET['CONSUMER_TIMEOUT_S'] with it.",
                id="leveret.W004",
            )
        )
    return warnings


def _actors_outside_settings(project: list[type[Actor]]) -> list[CheckMessage]:
    """W002: modules imported so far that define actors the worker would not run."""
    stray: dict[str, list[type[Actor]]] = defaultdict(list)
    for actor in imported_actors():
        module = actor.__module__
        if actor not in project and not module.startswith("leveret."):
            stray[module].append(actor)
    return [
        Warning(
            f"module {module!r} defines actor(s) "
            f"{', '.join(f'{a.__qualname__} (queue {a.queue!r})' for a in actors)} but is "
            "not in LEVERET['ACTORS']: leveret_worker never consumes these queues, and "
            "every message sent to them waits there",
            hint=f"Add {module!r} to LEVERET['ACTORS'].",
            obj=module,
            id="leveret.W002",
        )
        for module, actors in sorted(stray.items())
    ]


@register("leveret")
def check_outbox_backlog(
    app_configs: Any = None, databases: Any = None, **_kwargs: Any
) -> list[CheckMessage]:
    """Warn about outbox rows waiting too long (W005) and rows given up on (W006).

    Runs for a project that uses the outbox (``OUTBOX`` or ``RELAY_IN_WORKER``), with
    plain ``check`` and whenever the checks cover the settings' database; a database that
    cannot be read within `leveret.django.backlog.READ_TIMEOUT_S` is logged and skipped.

    Returns:
        ``leveret.W005`` and ``leveret.W006`` warnings.
    """
    from django.db import connections

    from leveret.django.backlog import (
        BACKLOG_HINT,
        FAILED_HINT,
        OutboxUnreadable,
        read_backlog,
        uses_outbox,
    )

    found = load()
    if found.problems or not uses_outbox(found) or found.database not in connections.settings:
        return []  # E001/E003 say what is wrong
    if databases is not None and found.database not in databases:
        return []
    try:
        backlog = read_backlog(found)
    except OutboxUnreadable as exc:
        log.info("outbox_check_skipped", reason=str(exc))
        return []
    warnings: list[CheckMessage] = []
    late = backlog.backlog_message()
    if late is not None:
        warnings.append(Warning(late, hint=BACKLOG_HINT, id="leveret.W005"))
    failed = backlog.failed_message()
    if failed is not None:
        warnings.append(Warning(failed, hint=FAILED_HINT, id="leveret.W006"))
    return warnings
