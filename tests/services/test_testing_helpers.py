"""The helpers users get for their own unit tests (services.testing)."""

from __future__ import annotations

import pytest

from actors import Actor, Context, actor, handler, publish
from schemas import Message
from services.testing import memory_broker


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
