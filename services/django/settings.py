"""The ``LEVERET`` dict in Django settings, read with defaults and checked.

```python
LEVERET = {
    "BROKER_URL": "amqp://guest:guest@localhost:5672/",  # default: $LEVERET_BROKER_URL
    "NAMESPACE": "shop",                                 # default: $LEVERET_NAMESPACE
    "ACTORS": ["shop.actors"],                           # modules the worker runs
    "SCHEDULES": ["shop.schedules"],                     # modules defining schedules
    "MIDDLEWARE": ["shop.audit.AuditMiddleware"],        # the project's own middleware
    "OUTBOX": False,                # publish through the transactional outbox by default
    "OUTBOX_PRUNE_AFTER_S": 7 * 24 * 3600,               # delete sent rows after this
    "OUTBOX_MAX_ATTEMPTS": 10,      # a row the broker keeps refusing is then marked failed
    "OUTBOX_WARN_AFTER_S": 300.0,   # check, leveret_status, dashboard: rows waiting longer
    "RELAY_IN_WORKER": False,       # leveret_worker also runs the outbox relay
    "DATABASE": "default",          # the alias whose transactions publishing follows
    "CONFIRM_TIMEOUT_S": 30.0,      # how long a publish waits for the broker's confirm
    "CONNECT_TIMEOUT_S": 5.0,       # ...and for a broker that cannot be reached
    "FAIL_FAST": False,             # in a transaction, raise at once if the broker is down
    "TEST_BROKER_URL": "memory://", # the broker while tests run (None: BROKER_URL)
    "DECLARE_ON_MIGRATE": True,     # `manage.py migrate` declares the actors' topology
    "CONSUMER_TIMEOUT_S": 1800.0,   # the broker's consumer_timeout (checks, the worker)
    "DASHBOARD_READ_ONLY": False,   # leveret.django.dashboard hides replay and purge
    "MANAGEMENT_URL": None,         # the dashboard's management API; default:
                                    # $LEVERET_MANAGEMENT_URL, else BROKER-HOST:15672 ("": none)
}
```

`load()` reads the settings once and again after each change (``override_settings``,
pytest-django's ``settings`` fixture).
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from leveret.actors.checks import is_count
from leveret.schemas.errors import ConfigurationError
from leveret.services import config
from leveret.services.middleware import Middleware
from leveret.services.observability.redaction import redact
from leveret.services.topology import naming

MANAGEMENT_URL_ENV = "LEVERET_MANAGEMENT_URL"
"""The environment variable naming the management API, as for ``leveret status``."""
TASKS_BACKEND = "leveret.django.tasks.LeveretBackend"
"""The ``BACKEND`` of ``settings.TASKS`` that runs Django tasks on Leveret."""

DEFAULTS: dict[str, Any] = {
    "BROKER_URL": None,
    "NAMESPACE": None,
    "ACTORS": [],
    "SCHEDULES": [],
    "MIDDLEWARE": [],
    "OUTBOX": False,
    "OUTBOX_PRUNE_AFTER_S": 7 * 24 * 3600.0,
    "OUTBOX_MAX_ATTEMPTS": 10,
    "OUTBOX_WARN_AFTER_S": 300.0,
    "RELAY_IN_WORKER": False,
    "DATABASE": "default",
    "CONFIRM_TIMEOUT_S": 30.0,
    "CONNECT_TIMEOUT_S": config.DEFAULT_CONNECT_TIMEOUT_S,
    "FAIL_FAST": False,
    "TEST_BROKER_URL": "memory://",
    "DECLARE_ON_MIGRATE": True,
    "CONSUMER_TIMEOUT_S": 1800.0,
    "DASHBOARD_READ_ONLY": False,
    "MANAGEMENT_URL": None,
}


@dataclass(frozen=True, slots=True)
class LeveretSettings:
    """The ``LEVERET`` settings with defaults filled in.

    Attributes:
        broker_url: Broker URL (``amqp://``, ``amqps://`` or ``memory://``).
        namespace: Prefix of every exchange and queue.
        actors: Modules that define the project's actors.
        schedules: Modules that define schedules (besides the `periodic` actors of
            `actors`).
        middleware: Dotted paths of the project's `Middleware` classes (made with no
            arguments) or instances, run by the project's broker and ``leveret_worker``
            in this order (see `project_middleware`).
        outbox: Publish through the transactional outbox inside transactions by default.
        outbox_prune_after_s: Seconds after which sent outbox rows are deleted.
        outbox_max_attempts: Refusals after which the relay marks an outbox row failed.
        outbox_warn_after_s: Outbox rows waiting longer than this are warned about
            (``check``, ``leveret_status``, the mounted dashboard).
        relay_in_worker: ``leveret_worker`` also runs the outbox relay.
        database: The database alias whose transactions publishing follows.
        confirm_timeout_s: How long a publish waits for the broker's confirm.
        connect_timeout_s: How long a connection attempt may take, and a publish waits for
            a broker that cannot be reached (`RabbitOptions.connect_timeout_s`).
        fail_fast: Inside a transaction, publishing first makes sure the broker is
            reachable and raises `BrokerUnavailable` at the call if not.
        test_broker_url: The broker URL while tests run (None: `broker_url`).
        declare_on_migrate: ``manage.py migrate`` declares the actors' topology.
        consumer_timeout_s: The broker's ``consumer_timeout``: handlers need a time limit
            below it (``check`` warns, the worker too).
        dashboard_read_only: The dashboard mounted from ``leveret.django.dashboard`` hides
            and refuses replay and purge.
        management_url: The management API the mounted dashboard reads (rates, unacked,
            and the queue figures while AMQP is down): ``MANAGEMENT_URL``, else
            ``$LEVERET_MANAGEMENT_URL``, else None (port 15672 of the broker's host); ""
            for AMQP only.
        configured: ``settings.LEVERET`` exists (False: every value is a default).
    """

    broker_url: str
    namespace: str
    actors: tuple[str, ...] = ()
    schedules: tuple[str, ...] = ()
    middleware: tuple[str, ...] = ()
    outbox: bool = False
    outbox_prune_after_s: float = DEFAULTS["OUTBOX_PRUNE_AFTER_S"]
    outbox_max_attempts: int = DEFAULTS["OUTBOX_MAX_ATTEMPTS"]
    outbox_warn_after_s: float = DEFAULTS["OUTBOX_WARN_AFTER_S"]
    relay_in_worker: bool = False
    database: str = "default"
    confirm_timeout_s: float = 30.0
    connect_timeout_s: float = config.DEFAULT_CONNECT_TIMEOUT_S
    fail_fast: bool = False
    test_broker_url: str | None = "memory://"
    declare_on_migrate: bool = True
    dashboard_read_only: bool = False
    management_url: str | None = None
    consumer_timeout_s: float = 1800.0
    configured: bool = True
    problems: tuple[str, ...] = field(default=(), compare=False)


def read(raw: object) -> LeveretSettings:
    """Read a ``LEVERET`` value; what is wrong is listed in `problems`, never raised.

    Args:
        raw: The value of ``settings.LEVERET`` (None when it is not set).
    """
    problems: list[str] = []
    values = dict(DEFAULTS)
    configured = raw is not None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"LEVERET must be a dict, not {type(raw).__name__}")
        raw = {}
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        problems.append(f"unknown LEVERET key(s) {unknown}; known: {sorted(DEFAULTS)}")
    values.update({key: value for key, value in raw.items() if key in DEFAULTS})

    try:
        url = config.broker_url(values["BROKER_URL"] or None)
        config.scheme(url)
    except ConfigurationError:
        problems.append(
            "LEVERET['BROKER_URL'] must be an amqp://, amqps:// or memory:// URL (or a list "
            f"of a cluster's amqp:// URLs), not {redact(str(values['BROKER_URL']))!r}"
        )
        url = config.DEFAULT_BROKER_URL
    namespace = config.namespace(values["NAMESPACE"] or None)
    try:
        naming.check_namespace(str(namespace))
    except ConfigurationError as exc:
        problems.append(f"LEVERET['NAMESPACE']: {exc}")
        namespace = naming.DEFAULT_NAMESPACE
    actors = _modules(values, "ACTORS", problems)
    schedules = _modules(values, "SCHEDULES", problems)
    middleware = _modules(values, "MIDDLEWARE", problems, what="dotted paths")
    test_url = values["TEST_BROKER_URL"]
    if test_url is not None:
        try:
            test_url = config.broker_url(test_url)
            config.scheme(test_url)
        except ConfigurationError:
            problems.append(
                "LEVERET['TEST_BROKER_URL'] must be an amqp://, amqps:// or memory:// URL "
                f"(or None for BROKER_URL), not {redact(str(test_url))!r}"
            )
            test_url = DEFAULTS["TEST_BROKER_URL"]
    for key in (
        "OUTBOX",
        "RELAY_IN_WORKER",
        "FAIL_FAST",
        "DECLARE_ON_MIGRATE",
        "DASHBOARD_READ_ONLY",
    ):
        if not isinstance(values[key], bool):
            problems.append(f"LEVERET[{key!r}] must be True or False, not {values[key]!r}")
            values[key] = False
    for key in (
        "OUTBOX_PRUNE_AFTER_S",
        "OUTBOX_WARN_AFTER_S",
        "CONFIRM_TIMEOUT_S",
        "CONNECT_TIMEOUT_S",
        "CONSUMER_TIMEOUT_S",
    ):
        number = values[key]
        if not config.positive_seconds(number):
            problems.append(f"LEVERET[{key!r}] must be a positive number of seconds")
            values[key] = DEFAULTS[key]
    attempts = values["OUTBOX_MAX_ATTEMPTS"]
    if not is_count(attempts):
        problems.append("LEVERET['OUTBOX_MAX_ATTEMPTS'] must be a whole number of at least 1")
        values["OUTBOX_MAX_ATTEMPTS"] = DEFAULTS["OUTBOX_MAX_ATTEMPTS"]
    management_url = values["MANAGEMENT_URL"]
    if management_url is not None and not isinstance(management_url, str):
        problems.append(
            "LEVERET['MANAGEMENT_URL'] must be the management API's http(s):// URL, \"\" "
            "(AMQP only) or None"
        )
        management_url = None
    if management_url is None:
        management_url = os.environ.get(MANAGEMENT_URL_ENV)
    if not isinstance(values["DATABASE"], str):
        problems.append("LEVERET['DATABASE'] must be a database alias (a string)")
        values["DATABASE"] = "default"
    return LeveretSettings(
        broker_url=url,
        namespace=str(namespace),
        actors=tuple(actors),
        schedules=tuple(schedules),
        middleware=tuple(middleware),
        outbox=values["OUTBOX"],
        outbox_prune_after_s=float(values["OUTBOX_PRUNE_AFTER_S"]),
        outbox_max_attempts=values["OUTBOX_MAX_ATTEMPTS"],
        outbox_warn_after_s=float(values["OUTBOX_WARN_AFTER_S"]),
        relay_in_worker=values["RELAY_IN_WORKER"],
        database=values["DATABASE"],
        confirm_timeout_s=float(values["CONFIRM_TIMEOUT_S"]),
        connect_timeout_s=float(values["CONNECT_TIMEOUT_S"]),
        fail_fast=values["FAIL_FAST"],
        test_broker_url=None if test_url is None else str(test_url),
        declare_on_migrate=values["DECLARE_ON_MIGRATE"],
        dashboard_read_only=values["DASHBOARD_READ_ONLY"],
        management_url=management_url,
        consumer_timeout_s=float(values["CONSUMER_TIMEOUT_S"]),
        configured=configured,
        problems=tuple(problems),
    )


def _modules(
    values: dict[str, Any], key: str, problems: list[str], *, what: str = "module names"
) -> list[str]:
    modules = values[key]
    if isinstance(modules, str) or not isinstance(modules, list | tuple):
        problems.append(f"LEVERET[{key!r}] must be a list of {what}")
        return []
    if not all(isinstance(name, str) and name for name in modules):
        problems.append(f"LEVERET[{key!r}] must hold {what} (non-empty strings)")
        return []
    return list(modules)


def project_middleware(found: LeveretSettings | None = None) -> list[Middleware]:
    """The middleware ``LEVERET["MIDDLEWARE"]`` names, in order: each path's class made
    with no arguments, or its instance as it is.

    Raises:
        ConfigurationError: A path that does not import, or names something that is
            neither a `Middleware` subclass nor an instance of one (says what to write).
    """
    found = found or load()
    return [load_middleware(path) for path in found.middleware]


def load_middleware(path: str) -> Middleware:
    """The middleware one ``LEVERET["MIDDLEWARE"]`` entry names (see `project_middleware`).

    Raises:
        ConfigurationError: It does not import, or is no `Middleware` class or instance.
    """
    module_name, _, name = path.rpartition(".")
    where = f"LEVERET['MIDDLEWARE'] names {path!r}"
    try:
        value = getattr(importlib.import_module(module_name), name) if module_name else None
    except Exception as exc:  # any import failure is the finding
        raise ConfigurationError(f"{where}, which cannot be imported: {exc!r}") from exc
    if isinstance(value, type) and issubclass(value, Middleware):
        try:
            return value()
        except Exception as exc:  # its constructor's failure is the finding
            raise ConfigurationError(
                f"{where}, whose class cannot be made without arguments: {exc!r}; name an "
                "instance made in that module instead"
            ) from exc
    if isinstance(value, Middleware):
        return value
    kind = "nothing" if value is None else f"{type(value).__name__} {value!r:.60}"
    raise ConfigurationError(
        f"{where}, which is {kind}: name a subclass of leveret.Middleware "
        '("myproject.audit.AuditMiddleware") or an instance of one, as module.attribute'
    )


_read: tuple[Any, LeveretSettings] | None = None


def load() -> LeveretSettings:
    """The project's ``LEVERET`` settings (``django.conf.settings`` must be configured).

    Read again whenever ``settings.LEVERET`` differs from the value read last (a test's
    ``override_settings``, pytest-django's ``settings``, even a change made in place).
    """
    global _read
    from django.conf import settings

    raw = getattr(settings, "LEVERET", None)
    cached = _read
    if cached is not None and type(cached[0]) is type(raw) and cached[0] == raw:
        return cached[1]
    found = read(raw)
    try:
        kept = copy.deepcopy(raw)
    except Exception:  # noqa: BLE001  # something that cannot be copied: compare as it is
        kept = raw
    _read = (kept, found)
    return found


def forget() -> None:
    """Read the settings again at the next `load`."""
    global _read
    _read = None


def under_test() -> bool:
    """Whether Django's test environment is set up (``manage.py test``, pytest-django).

    Both call ``django.test.utils.setup_test_environment``, which keeps what it changed on
    ``_TestState`` until ``teardown_test_environment``.
    """
    utils = sys.modules.get("django.test.utils")  # imported by whoever set it up
    if utils is None:
        return False
    # Django has no public way to ask this (docs/django.md, "Testing"): its private
    # `_TestState` holds `saved_data` exactly while the environment is set up.
    state = getattr(utils, "_TestState", None)
    if state is not None:
        return hasattr(state, "saved_data")
    # A Django without it: the dummy outbox set up and removed with the environment (public,
    # but the locmem email backend creates it as well), rather than the production broker.
    from django.core import mail

    return hasattr(mail, "outbox")


def broker_url(found: LeveretSettings | None = None) -> str:
    """The broker URL in force: ``TEST_BROKER_URL`` while tests run, else ``BROKER_URL``."""
    found = found or load()
    if found.test_broker_url is not None and under_test():
        return found.test_broker_url
    return found.broker_url
