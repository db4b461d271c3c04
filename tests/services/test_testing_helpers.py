"""The helpers users get for their own unit tests (leveret.services.testing)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from leveret.actors import Actor, Context, actor, handler, publish
from leveret.schemas import Message
from leveret.services.testing import memory_broker
from tests.support import wait_until


class Signup(Message, topic="tests.helpers.signup"):
    email: str


class Welcome(Message, topic="tests.helpers.welcome"):
    email: str


sent: list[str] = []


class Accounts(Actor, queue="accounts"):
    @handler
    def on_signup(self, msg: Signup, ctx: Context) -> None:
        if "@" not in msg.email:
            raise ValueError(f"bad email {msg.email}")
        ctx.publish(Welcome(email=msg.email))


@actor(queue="mailer")
def mailer(msg: Welcome) -> None:
    sent.append(msg.email)


def test_join_runs_the_whole_chain_synchronously() -> None:
    sent.clear()
    with memory_broker(Accounts, mailer) as broker:
        publish(Signup(email="ada@example.com"))
        stats = broker.join()
    assert sent == ["ada@example.com"]
    assert stats.handled == 2


def test_join_reraises_the_handler_exception_and_still_dead_letters() -> None:
    with memory_broker(Accounts, mailer) as broker:
        Accounts.send(Signup(email="nope"))
        with pytest.raises(ValueError, match="bad email nope"):
            broker.join()
        (letter,) = broker.dead_letters(Accounts)
    assert letter.headers["x-leveret-error-type"] == "builtins.ValueError"


def test_join_can_collect_failures_instead_of_raising() -> None:
    with memory_broker(Accounts, mailer) as broker:
        Accounts.send(Signup(email="nope"))
        stats = broker.join(raise_errors=False)
    assert (stats.handled, stats.dead_lettered) == (0, 1)


class Slowly(Message, topic="tests.helpers.slowly"):
    n: int


class Gate(Actor, queue="gate"):
    """Holds every handler until `release` is set; counts how many run at once."""

    release = threading.Event()
    lock = threading.Lock()
    running = 0
    most = 0

    @handler
    def on(self, msg: Slowly) -> None:
        with Gate.lock:
            Gate.running += 1
            Gate.most = max(Gate.most, Gate.running)
        Gate.release.wait(10)
        with Gate.lock:
            Gate.running -= 1


def test_the_memory_worker_honours_prefetch() -> None:
    """4 handler threads but prefetch 2: at most 2 deliveries are out at once, as on RabbitMQ."""
    with memory_broker(Gate) as broker:
        for n in range(6):
            Gate.send(Slowly(n=n))
        worker = broker.worker([Gate], threads=4, prefetch=2)
        worker.start()
        try:
            wait_until(lambda: Gate.running == 2, 5, "two handlers to run")
            assert broker.pending(Gate) == 6  # 4 waiting in the queue, 2 unacked
            Gate.release.set()
            wait_until(lambda: worker.stats.handled == 6, 10, "every message")
        finally:
            assert worker.shutdown(10) == 0
    assert Gate.most == 2


@pytest.mark.parametrize(
    "given",
    [
        "tests.schedule_samples",  # a module's name, as LEVERET["SCHEDULES"] lists it
        "module",  # the module itself
        "entry",  # the entry, as the docs show
    ],
)
def test_add_schedules_takes_entries_modules_and_module_names(given: str) -> None:
    """``add_schedules`` runs the entries of what it is given: a `Schedule`, a module or
    a module's name (its schedules and its periodic actors')."""
    import tests.schedule_samples as samples

    argument: Any = {"module": samples, "entry": samples.every_second}.get(given, given)
    with memory_broker(samples.Seconds) as broker:
        broker.add_schedules(argument)
        broker.advance_clock(3)
        assert [tick.schedule for tick in broker.sent_ticks] == ["tests-every-second"] * 3


@pytest.mark.parametrize("wrong", [42, None, "tests.no_such_module", ["tests.schedule_samples"]])
def test_add_schedules_refuses_anything_else_at_the_call(wrong: object) -> None:
    """Anything else raises at the call, saying what it takes (it was an AttributeError
    deep in the scheduler)."""
    from leveret.schemas.errors import LeveretError

    with memory_broker() as broker, pytest.raises(LeveretError, match="add_schedules"):
        broker.add_schedules(wrong)  # type: ignore[arg-type]
