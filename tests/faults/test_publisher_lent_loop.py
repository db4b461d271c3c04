"""A caller that publishes while nothing else is in flight runs the publisher's I/O loop on
its own thread (the I/O thread lends it); every other caller still gets through, and an
interruption while a caller has the loop loses no message it was told is stored."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import pika
import pytest

from leveret.schemas.errors import PublishError
from leveret.services import RabbitBroker
from leveret.services.middleware import Middleware, MiddlewareChain
from leveret.services.rabbitmq._outgoing import Outgoing
from leveret.services.rabbitmq._publisher import Publisher
from leveret.services.testing import captured_logs
from tests.support import take_all, wait_until

pytestmark = [pytest.mark.fault]


@pytest.fixture
def queue(rabbit_broker: RabbitBroker) -> Iterator[str]:
    """A quorum queue of its own, deleted afterwards."""
    name = f"{rabbit_broker.namespace}.lent"
    with rabbit_broker.admin() as channel:
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        yield name
    finally:
        with rabbit_broker.admin() as channel:
            channel.queue_delete(name)


class ConfirmThreads(Middleware):
    """A middleware that records on which thread each confirm was handled."""

    def __init__(self) -> None:
        self.threads: Counter[int] = Counter()

    def publish_confirmed(self, ok: bool, returned: bool, confirm_s: float | None) -> None:
        self.threads[threading.get_ident()] += 1


def _message(queue: str, message_id: str) -> Outgoing:
    return Outgoing("", queue, message_id.encode(), pika.BasicProperties(message_id=message_id))


def _stored(url: str, queue: str) -> Counter[str]:
    return Counter(str(props.message_id) for props, _body in take_all(url, queue))


def test_a_lone_caller_runs_the_loop_and_concurrent_callers_all_get_through(
    rabbit_url: str, queue: str
) -> None:
    """One thread publishing one message at a time has its confirms handled on its own
    thread; then four threads publishing one at a time, one publishing batches and an
    asyncio task, all at once: every message is stored exactly once and no call hangs."""
    publisher = Publisher(rabbit_url, confirm_timeout_s=20)
    observer = ConfirmThreads()
    publisher.middleware = MiddlewareChain([observer])
    try:
        for n in range(200):
            publisher.publish([_message(queue, f"alone-{n}")])
        alone = observer.threads[threading.get_ident()]
        assert alone >= 190, f"only {alone} of 200 confirms on the caller's thread"

        errors: list[BaseException] = []

        def singles(name: str) -> None:
            try:
                for n in range(100):
                    publisher.publish([_message(queue, f"{name}-{n}")])
            except BaseException as exc:  # reported below
                errors.append(exc)

        def batches() -> None:
            try:
                for start in range(0, 500, 100):
                    publisher.publish(
                        [_message(queue, f"batch-{n}") for n in range(start, start + 100)]
                    )
            except BaseException as exc:  # reported below
                errors.append(exc)

        async def awaited() -> None:
            for n in range(100):
                await publisher.publish_async([_message(queue, f"async-{n}")])

        threads = [threading.Thread(target=singles, args=(f"single{t}",)) for t in range(4)]
        threads.append(threading.Thread(target=batches))
        threads.append(threading.Thread(target=lambda: asyncio.run(awaited())))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not [thread for thread in threads if thread.is_alive()], "a caller hangs"
        assert not errors, errors
    finally:
        publisher.close()
    stored = _stored(rabbit_url, queue)
    expected = (
        {f"alone-{n}" for n in range(200)}
        | {f"single{t}-{n}" for t in range(4) for n in range(100)}
        | {f"batch-{n}" for n in range(500)}
        | {f"async-{n}" for n in range(100)}
    )
    assert set(stored) == expected
    assert [one for one, count in stored.items() if count > 1] == []


class Interrupted(BaseException):
    """What the test's signal handler raises (as KeyboardInterrupt would be)."""


@contextmanager
def _signalled(
    handler: Callable[[int, FrameType | None], None], seed: int, max_gap_s: float
) -> Iterator[None]:
    """SIGUSR1 to this process every 5 ms to `max_gap_s` (at random) while inside, handled
    by `handler` on the main thread; the previous handler is put back after."""
    stop = threading.Event()

    def signaller() -> None:
        rng = random.Random(seed)
        while not stop.wait(rng.uniform(0.005, max_gap_s)):
            os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, handler)
    sender = threading.Thread(target=signaller, daemon=True)
    sender.start()
    try:
        yield
    finally:
        # A signal already sent may still be handled: by a handler that does nothing.
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: None)
        stop.set()
        sender.join()
        time.sleep(0.05)
        signal.signal(signal.SIGUSR1, previous)


def test_an_interruption_while_a_caller_has_the_loop_loses_nothing_confirmed(
    rabbit_url: str, queue: str
) -> None:
    """A signal handler raises in the main thread at random moments while it publishes one
    message at a time, so most land while it runs the I/O loop: every publish that returned
    is stored exactly once, nothing is stored twice, the publisher reconnects after each
    interruption that hit the loop, and publishing goes on afterwards."""
    publisher = Publisher(rabbit_url, confirm_timeout_s=20)
    returned: list[str] = []
    raised: list[str] = []
    inside = 0

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise Interrupted

    with _signalled(interrupt, seed=7, max_gap_s=0.04):
        n = 0
        # 400 publishes, and more (up to 2,000) until 20 interruptions landed inside one:
        # how many do depends on the machine's load.
        while n < 400 or (inside < 20 and n < 2000):
            message_id = f"m-{n}"
            try:
                try:
                    publisher.publish([_message(queue, message_id)])
                    returned.append(message_id)
                except (Interrupted, PublishError):
                    raised.append(message_id)
                    inside += 1
                n += 1
            except Interrupted:
                continue  # landed in the test's own code: the same message again
    try:
        assert inside >= 20, f"only {inside} interruptions landed inside publish"
        # They hit the loop itself, not only a wait: each of those ended the connection.
        opened = publisher.connections_opened
        assert opened > 1, f"{opened} connection(s): no interruption ended a connection"
        publisher.publish([_message(queue, "after")])
    finally:
        publisher.close()
    stored = _stored(rabbit_url, queue)
    assert [one for one, count in stored.items() if count > 1] == []
    missing = [one for one in returned if one not in stored]
    assert missing == [], f"{len(missing)} confirmed messages were not stored: {missing[:5]}"
    assert "after" in stored
    assert set(stored) <= set(returned) | set(raised) | {"after"}


def test_a_signal_handler_that_publishes_gets_an_answer_at_once(
    rabbit_url: str, queue: str
) -> None:
    """A signal handler publishing while the main thread publishes: when the main thread
    was running the loop for its own message, the handler's publish fails at once with a
    PublishError that says what to do (it cannot wait for a loop its own thread holds);
    otherwise it is stored. Nothing waits for its timeout."""
    publisher = Publisher(rabbit_url, confirm_timeout_s=5)
    outcomes: list[str] = []

    def publish_too(_signum: int, _frame: FrameType | None) -> None:
        message_id = f"handler-{len(outcomes)}"
        try:
            publisher.publish([_message(queue, message_id)])
            outcomes.append(message_id)
        except PublishError as exc:
            outcomes.append(f"refused: {exc}")

    try:
        with _signalled(publish_too, seed=11, max_gap_s=0.03):
            for n in range(300):
                publisher.publish([_message(queue, f"main-{n}")])
    finally:
        publisher.close()
    refused = [one for one in outcomes if one.startswith("refused: ")]
    stored_by_handler = [one for one in outcomes if not one.startswith("refused: ")]
    assert refused, "no handler ran while the main thread had the loop"
    assert all("signal handler" in one for one in refused), refused[:3]
    stored = _stored(rabbit_url, queue)
    assert {f"main-{n}" for n in range(300)} <= set(stored)
    assert set(stored_by_handler) <= set(stored)


class Boom(Exception):
    """A fault injected into the publisher's I/O loop."""


def _boom() -> None:
    raise Boom("fault injected into the publisher's loop")


def test_a_fault_in_the_loop_on_either_thread_fails_only_what_was_in_flight(
    rabbit_url: str, queue: str
) -> None:
    """A callback that raises on the publisher's loop: once while nothing is in flight (the
    I/O thread runs it), then while a caller publishes in a loop (the caller, which has the
    loop, runs it on its own thread in every run seen; either way the outcome must be the
    same). Each fault is logged and ends that connection;
    a publish in flight fails with PublishError (never a hang), every publish that returned
    is stored once, and publishing goes on, on a new connection."""
    publisher = Publisher(rabbit_url, confirm_timeout_s=10)
    returned: list[str] = []
    failed: list[str] = []
    reasons: list[str] = []
    try:
        with captured_logs() as logs:
            publisher.publish([_message(queue, "first")])
            returned.append("first")
            opened = publisher.connections_opened
            publisher.call_soon(_boom)  # nothing in flight: the I/O thread runs it
            wait_until(lambda: publisher.crashed is not None, 10, "the I/O thread's crash")
            for n in range(300):
                message_id = f"m-{n}"
                if n == 100:
                    publisher.call_soon(_boom)  # run by this thread, which has the loop
                try:
                    publisher.publish([_message(queue, message_id)])
                    returned.append(message_id)
                except PublishError as exc:
                    failed.append(message_id)
                    reasons.append(str(exc))
        crashes = [event for event in logs if event["event"] == "io_thread_crashed"]
        assert len(crashes) == 2, crashes
        assert all("fault injected" in event["error"] for event in crashes), crashes
        assert publisher.connections_opened >= opened + 2
        assert len(failed) <= 1, failed  # one caller's publish at most was in flight
        assert all("Boom" in reason for reason in reasons), reasons
    finally:
        publisher.close()
    stored = _stored(rabbit_url, queue)
    assert [one for one, count in stored.items() if count > 1] == []
    assert set(returned) <= set(stored)
    assert set(stored) <= set(returned) | set(failed)
