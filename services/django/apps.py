"""The Django app: ``INSTALLED_APPS = [..., "services.django"]`` (label ``leveret``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

from services.logs import get_logger

if TYPE_CHECKING:
    from services.broker import Broker
    from services.django.publishing import TransactionalDispatcher

log = get_logger("leveret.django")


class LeveretConfig(AppConfig):
    """Configures the process's broker from ``settings.LEVERET`` when Django is ready.

    `publish` and `Actor.send` then follow Django's transactions (see
    `services.django.publishing`). Settings errors are reported by the system checks.
    """

    name = "services.django"
    label = "leveret"
    verbose_name = "Leveret"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from services.django import checks  # noqa: F401  # registers the system checks
        from services.django.settings import load

        if load().problems:
            log.warning("leveret_not_configured", hint="run manage.py check for the reasons")
            return
        install()


def install(**overrides: object) -> TransactionalDispatcher:
    """Build the broker from ``settings.LEVERET`` and configure it, transaction-aware.

    Args:
        overrides: Broker keyword arguments that win over the settings (``url``,
            ``namespace``); for tests.

    Returns:
        The `TransactionalDispatcher` now configured.
    """
    from actors import dispatch
    from services.django.publishing import TransactionalDispatcher
    from services.django.settings import load

    found = load()
    dispatcher = TransactionalDispatcher(
        build_broker(**overrides), outbox=found.outbox, using=found.database
    )
    dispatch.configure(dispatcher)
    return dispatcher


def build_broker(**overrides: object) -> Broker:
    """A `Broker` as ``settings.LEVERET`` says (URL, namespace, confirm timeout)."""
    from services.broker import Broker
    from services.django.settings import load

    found = load()
    url = str(overrides.pop("url", found.broker_url))
    namespace = str(overrides.pop("namespace", found.namespace))
    if url.split("://", 1)[0].lower() in ("amqp", "amqps"):
        overrides.setdefault("confirm_timeout_s", found.confirm_timeout_s)
    return Broker(url, namespace=namespace, **overrides)  # type: ignore[arg-type]
