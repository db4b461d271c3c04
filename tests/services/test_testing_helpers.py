"""The helpers users get for their own unit tests (leveret.services.testing)."""

from __future__ import annotations

import threading

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
