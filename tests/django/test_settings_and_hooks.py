"""Settings errors surface as system check errors; the broker's middleware runs around each
message (before in order, after in reverse), the project's own named in its settings."""

from __future__ import annotations

import pytest
from django.test import override_settings
from shop.messages import OrderPlaced

from leveret.actors import Actor, handler
from leveret.django.checks import check_settings
from leveret.django.settings import read
from leveret.schemas.envelope import Envelope
from leveret.services import MemoryBroker, Middleware
from leveret.services.delivery import Outcome


class Failing(Actor, queue="hooks.failing"):
    @handler
    def fail(self, msg: OrderPlaced) -> None:
        raise RuntimeError("handler fails")


def test_defaults_when_leveret_is_not_set() -> None:
    """No LEVERET dict: environment/default URL and namespace, no outbox, no problem."""
    found = read(None)
    assert found.problems == ()
    assert found.outbox is False
    assert found.broker_url.startswith(("amqp://", "memory://"))


@override_settings(
    LEVERET={
        "BROKER_URL": "ftp://x",
        "NAMESPACE": "bad name",
        "BOGUS": 1,
        "OUTBOX": "yes",
        "ACTORS": ["no_such_module_here"],
        "DATABASE": "nope",
    }
)
def test_wrong_settings_are_system_check_errors() -> None:
    """Each mistake is one error with an id, found by `manage.py check`."""
    errors = check_settings()
    ids = sorted(error.id for error in errors)
    text = " ".join(error.msg for error in errors)
    assert ids == ["leveret.E001"] * 4 + ["leveret.E002", "leveret.E003"]
    for mistake in ("BOGUS", "ftp://", "OUTBOX", "bad name"):
        assert mistake in text


def test_the_connect_timeout_setting_reaches_the_brokers_transport() -> None:
    """``CONNECT_TIMEOUT_S`` is the RabbitMQ transport's connect timeout; a value that is
    not a positive number of seconds is a settings error."""
    from leveret.django.project import new_broker

    found = read({"CONNECT_TIMEOUT_S": 1.5})
    assert found.problems == ()
    broker = new_broker(found, url="amqp://guest:guest@127.0.0.1:1/")
    try:
        assert broker.transport.options.connect_timeout_s == 1.5  # type: ignore[attr-defined]
        assert broker.transport.publisher.connect_timeout_s == 1.5  # type: ignore[attr-defined]
    finally:
        broker.close()
    assert any("CONNECT_TIMEOUT_S" in p for p in read({"CONNECT_TIMEOUT_S": 0}).problems)


def test_the_management_url_setting_else_the_environment_names_the_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``MANAGEMENT_URL`` wins; without it ``$LEVERET_MANAGEMENT_URL`` (as for ``leveret
    status``), else None (the broker host's port 15672); "" is AMQP only."""
    monkeypatch.delenv("LEVERET_MANAGEMENT_URL", raising=False)
    assert read({}).management_url is None
    monkeypatch.setenv("LEVERET_MANAGEMENT_URL", "http://rabbit:15693/")
    assert read({}).management_url == "http://rabbit:15693/"
    assert read({"MANAGEMENT_URL": "https://mq.example/"}).management_url == "https://mq.example/"
    assert read({"MANAGEMENT_URL": ""}).management_url == ""
    assert any("MANAGEMENT_URL" in p for p in read({"MANAGEMENT_URL": 15672}).problems)


class _Recording(Middleware):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        self.seen.append(f"before {self.name}")

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        self.seen.append(f"after {self.name} {outcome and outcome.fate}")


def test_hooks_run_around_each_message_in_stack_order() -> None:
    """before-hooks in order, after-hooks in reverse; a failing hook does not stop it."""
    seen: list[str] = []

    class Broken(Middleware):
        def before_handle(self, actor: str, envelope: Envelope) -> None:
            raise RuntimeError("hook bug")

        def after_handle(
            self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
        ) -> None:
            seen.append("after broken")

    broker = MemoryBroker(
        namespace="hooks", middleware=[_Recording("a", seen), Broken(), _Recording("b", seen)]
    )
    broker.declare(Failing)
    worker = broker.worker([Failing], threads=1)
    broker.send(Failing, OrderPlaced(order_id=999))
    worker.start()
    try:
        from tests.support import wait_until

        wait_until(lambda: len(seen) >= 5, 10, "the hooks")
    finally:
        worker.shutdown(5)
    assert seen[:5] == ["before a", "before b", "after b retry", "after broken", "after a retry"]


class Audit(Middleware):
    """A project's middleware, named in its settings (tests/django: this module)."""


AUDIT = Audit()


def test_the_projects_middleware_setting_names_classes_or_instances() -> None:
    """``LEVERET["MIDDLEWARE"]``: a class is made, an instance taken as it is; the
    project's broker and worker run them after Django's connection handling."""
    from leveret.django.hooks import CloseOldConnections
    from leveret.django.project import worker_middleware
    from leveret.django.settings import project_middleware

    found = read({"MIDDLEWARE": [f"{__name__}.Audit", f"{__name__}.AUDIT"]})
    assert found.problems == ()
    made, given = project_middleware(found)
    assert isinstance(made, Audit)
    assert made is not AUDIT
    assert given is AUDIT
    first, *rest = worker_middleware(found)
    assert isinstance(first, CloseOldConnections)
    assert [type(item) for item in rest] == [Audit, Audit]


@override_settings(
    LEVERET={"MIDDLEWARE": ["no_such_module.Audit", f"{__name__}.Failing", "NoDots"]}
)
def test_middleware_that_cannot_be_loaded_is_a_system_check_error() -> None:
    """Each entry that does not import or is no Middleware is one E004 saying what to write."""
    errors = check_settings()
    assert [error.id for error in errors] == ["leveret.E004"] * 3
    assert "cannot be imported" in errors[0].msg
    assert "subclass of leveret.Middleware" in errors[1].msg
    assert all("AuditMiddleware" in str(error.hint) for error in errors)
    assert any("MIDDLEWARE" in p for p in read({"MIDDLEWARE": "a.B"}).problems)
