"""The Django app: ``INSTALLED_APPS = [..., "leveret.django"]`` (label ``leveret``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

from leveret.services.observability.logs import get_logger

if TYPE_CHECKING:
    from leveret.actors.dispatch import Dispatcher
    from leveret.django.publishing import TransactionalDispatcher
    from leveret.services.broker import Broker

log = get_logger("leveret.django")


class LeveretConfig(AppConfig):
    """Makes publishing follow Django's transactions and ``settings.LEVERET``.

    When Django is ready: `publish` and `Actor.send` go through a `TransactionalDispatcher`
    whose broker is built from the settings at first use (see `leveret.django.project`);
    any broker configured later (a test's `memory_broker`, the worker's own) follows the
    transactions too; ``migrate`` declares the actors' topology; Leveret's warnings reach
    standard error if the project's logging has no handler for them. Settings errors are
    reported by the system checks.
    """

    name = "leveret.django"
    label = "leveret"
    verbose_name = "Leveret"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from leveret.django import checks  # noqa: F401  # registers the system checks
        from leveret.django.receivers import connect
        from leveret.django.settings import load
        from leveret.services.observability.logs import add_fallback_handler

        add_fallback_handler()
        connect(self)
        if load().problems:
            log.warning("leveret_not_configured", hint="run manage.py check for the reasons")
            return
        install()


def install() -> TransactionalDispatcher:
    """Configure the project's transaction-aware dispatcher as the process's broker.

    Every `Broker` configured from now on (``configure(broker)``) is wrapped the same way.

    Returns:
        The `TransactionalDispatcher` now configured.
    """
    from leveret.actors import dispatch
    from leveret.django.publishing import TransactionalDispatcher

    dispatch.adapt_with(follow_transactions)
    dispatcher = TransactionalDispatcher()
    dispatch.configure(dispatcher)
    return dispatcher


def follow_transactions(dispatcher: Dispatcher) -> Dispatcher:
    """A `Broker` wrapped in a `TransactionalDispatcher`; anything else as it is."""
    from leveret.django.memory import attach
    from leveret.django.publishing import TransactionalDispatcher
    from leveret.services.broker import Broker
    from leveret.services.testing import MemoryBroker

    if isinstance(dispatcher, MemoryBroker):
        attach(dispatcher)
    if isinstance(dispatcher, Broker):
        return TransactionalDispatcher(dispatcher)
    return dispatcher


def build_broker(*, url: str | None = None, namespace: str | None = None) -> Broker:
    """A new `Broker` as ``settings.LEVERET`` says (URL in force, namespace, confirm timeout).

    Args:
        url: Instead of the settings' URL.
        namespace: Instead of the settings' namespace.
    """
    from leveret.django.project import new_broker

    return new_broker(url=url, namespace=namespace)
