"""The Django app: ``INSTALLED_APPS = [..., "leveret.django"]`` (label ``leveret``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

from leveret.services.logs import get_logger

if TYPE_CHECKING:
    from leveret.django.publishing import TransactionalDispatcher
    from leveret.services.broker import Broker

log = get_logger("leveret.django")


class LeveretConfig(AppConfig):
    """Configures the process's broker from ``settings.LEVERET`` when Django is ready.

    `publish` and `Actor.send` then follow Django's transactions (see
    `leveret.django.publishing`). Settings errors are reported by the system checks.
    """

    name = "leveret.django"
    label = "leveret"
    verbose_name = "Leveret"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from leveret.django import checks  # noqa: F401  # registers the system checks
        from leveret.django.settings import load

        if load().problems:
            log.warning("leveret_not_configured", hint="run manage.py check for the reasons")
            return
        install()


def install(*, url: str | None = None, namespace: str | None = None) -> TransactionalDispatcher:
    """Build the broker from ``settings.LEVERET`` and configure it, transaction-aware.

    Args:
        url: Instead of the settings' URL (tests).
        namespace: Instead of the settings' namespace (tests).

    Returns:
        The `TransactionalDispatcher` now configured.
    """
    from leveret.actors import dispatch
    from leveret.django.publishing import TransactionalDispatcher
    from leveret.django.settings import load

    found = load()
    dispatcher = TransactionalDispatcher(
        build_broker(url=url, namespace=namespace), outbox=found.outbox, using=found.database
    )
    dispatch.configure(dispatcher)
    return dispatcher


def build_broker(*, url: str | None = None, namespace: str | None = None) -> Broker:
    """A `Broker` as ``settings.LEVERET`` says (URL, namespace, confirm timeout).

    Args:
        url: Instead of the settings' URL (tests).
        namespace: Instead of the settings' namespace (tests).
    """
    from leveret.django.settings import load
    from leveret.services import config
    from leveret.services.broker import Broker
    from leveret.services.transport import RabbitOptions

    found = load()
    url = url or found.broker_url
    options = (
        RabbitOptions(confirm_timeout_s=found.confirm_timeout_s)
        if config.scheme(url) != "memory"
        else None
    )
    return Broker(url, namespace=namespace or found.namespace, options=options)
