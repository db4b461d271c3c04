"""Actors: handlers bound by type hints, function actors, definition-time errors, registry."""

from __future__ import annotations

import sys
import textwrap
import types

import pytest

from leveret.actors import Actor, Context, Reject, actor, actors_in, configure, handler
from leveret.actors.function import as_actor_class
from leveret.actors.registry import unique_queues
from leveret.schemas import ConfigurationError, DefinitionError, Message, NotHandled


class Shipped(Message, topic="tests.actors.shipped"):
    order_id: int


class Cancelled(Message, topic="tests.actors.cancelled"):
    order_id: int


class Warehouse(Actor, queue="tests.warehouse"):
    time_limit_s = 30

    @handler
    def shipped(self, msg: Shipped, ctx: Context) -> None: ...

    @handler
    def cancelled(self, msg: Cancelled) -> None: ...


@actor(queue="tests.mailer")
def mail_shipping_note(msg: Shipped) -> str:
    return f"shipped {msg.order_id}"


def test_handlers_are_bound_by_the_message_type_hint() -> None:
    assert Warehouse.queue == "tests.warehouse"
    assert Warehouse.topics() == ["tests.actors.cancelled", "tests.actors.shipped"]
    assert Warehouse.handlers["tests.actors.shipped"].takes_context
    assert not Warehouse.handlers["tests.actors.cancelled"].takes_context


def test_queue_defaults_to_snake_case_class_name_and_quorum() -> None:
    class PaymentRefunds(Actor):
        @handler
        def on(self, msg: Cancelled) -> None: ...

    assert PaymentRefunds.queue == "payment_refunds"
    assert PaymentRefunds.queue_type == "quorum"


def test_function_actor_is_still_callable_and_knows_its_queue() -> None:
    assert mail_shipping_note(Shipped(order_id=4)) == "shipped 4"
    assert mail_shipping_note.queue == "tests.mailer"
    assert as_actor_class(mail_shipping_note).topics() == ["tests.actors.shipped"]


def test_function_actor_queue_defaults_to_function_name() -> None:
    @actor
    def restock(msg: Cancelled, ctx: Context) -> None: ...

    assert restock.queue == "restock"
    assert as_actor_class(restock).handlers["tests.actors.cancelled"].takes_context


def test_handler_without_typed_message_is_refused() -> None:
    with pytest.raises(DefinitionError, match="first parameter 'msg' is hinted"):

        class Untyped(Actor):
            @handler
            def on(self, msg: dict) -> None: ...  # type: ignore[type-arg]


def test_function_actor_without_hint_is_refused() -> None:
    with pytest.raises(DefinitionError, match="SomeMessage"):

        @actor
        def untyped(msg):  # type: ignore[no-untyped-def]
            ...


def test_second_parameter_must_be_context() -> None:
    with pytest.raises(DefinitionError, match="must be hinted Context"):

        class Extra(Actor):
            @handler
            def on(self, msg: Shipped, other: int) -> None: ...


def test_two_handlers_for_one_topic_are_refused() -> None:
    with pytest.raises(DefinitionError, match=r"both take topic 'tests.actors.shipped'"):

        class Twice(Actor):
            @handler
            def a(self, msg: Shipped) -> None: ...

            @handler
            def b(self, msg: Shipped) -> None: ...


def test_unknown_actor_option_is_refused() -> None:
    with pytest.raises(DefinitionError, match=r"unknown actor option\(s\) \['retries'\]"):

        class Typo(Actor, retries=3):
            @handler
            def on(self, msg: Shipped) -> None: ...


def test_bad_time_limit_is_refused() -> None:
    with pytest.raises(DefinitionError, match="time_limit_s"):

        class Slow(Actor):
            time_limit_s = -1

            @handler
            def on(self, msg: Shipped) -> None: ...


def test_actor_without_handler_is_refused_unless_abstract() -> None:
    with pytest.raises(DefinitionError, match="no @handler"):

        class Empty(Actor):
            pass

    class Base(Actor, abstract=True):
        pass

    class Concrete(Base):
        @handler
        def on(self, msg: Shipped) -> None: ...

    assert Concrete.topics() == ["tests.actors.shipped"]


def test_subclass_inherits_handlers() -> None:
    class MoreWarehouse(Warehouse, queue="tests.more_warehouse"):
        pass

    assert MoreWarehouse.topics() == Warehouse.topics()


def test_sending_without_a_configured_broker_says_how_to_configure() -> None:
    configure(None)
    with pytest.raises(ConfigurationError, match=r"leveret\.configure"):
        Warehouse.send(Shipped(order_id=1))


def test_sending_a_message_the_actor_does_not_handle_is_an_error() -> None:
    class Unhandled(Message, topic="tests.actors.unhandled"):
        x: int

    with pytest.raises(NotHandled, match="no handler for Unhandled"):
        Warehouse.send(Unhandled(x=1))


def test_reject_carries_its_reason() -> None:
    assert Reject("bad order").reason == "bad order"


def test_registry_finds_actors_defined_in_modules() -> None:
    source = textwrap.dedent(
        """
        from leveret.actors import Actor, actor, handler
        from tests.actors.test_actor import Shipped, Warehouse  # imported, not defined here

        class Courier(Actor, queue="tests.courier"):
            @handler
            def on(self, msg: Shipped) -> None: ...

        @actor(queue="tests.sms")
        def sms(msg: Shipped) -> None: ...
        """
    )
    module = types.ModuleType("tests_registry_sample")
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, "<sample>", "exec"), module.__dict__)
        found = actors_in([module.__name__])
    finally:
        del sys.modules[module.__name__]
    assert [cls.queue for cls in found] == ["tests.courier", "tests.sms"]


def test_registry_reports_a_module_that_does_not_import() -> None:
    with pytest.raises(ConfigurationError, match="cannot import actor module 'no_such_mod'"):
        actors_in(["no_such_mod"])


def test_two_actors_on_one_queue_are_refused() -> None:
    class Again(Actor, queue="tests.warehouse"):
        @handler
        def on(self, msg: Shipped) -> None: ...

    with pytest.raises(DefinitionError, match=r"both use queue 'tests.warehouse'"):
        unique_queues([Warehouse, Again])
