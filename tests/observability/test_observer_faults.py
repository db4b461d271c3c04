"""Metrics never decide a message's fate: a middleware that raises where metrics count is
logged, and the message is handled, counted and settled as if it were not there (both
brokers)."""

from __future__ import annotations

import pytest

from leveret.schemas.envelope import Envelope
from leveret.services import MemoryBroker, RabbitBroker
from leveret.services.delivery import Outcome
from leveret.services.middleware import Middleware
from leveret.services.testing import captured_logs
from tests.observed_actors import Counted, Work
from tests.support import running, wait_until, with_middleware


class Exploding(Middleware):
    """A middleware whose handling hooks (those metrics count with) raise."""

    def before_handle(self, actor: str, envelope: Envelope) -> None:
        raise RuntimeError("observer broken")

    def after_handle(
        self, actor: str, envelope: Envelope, outcome: Outcome | None, duration_s: float
    ) -> None:
        raise RuntimeError("observer broken")


@pytest.mark.rabbitmq
def test_a_raising_observer_changes_nothing(broker: MemoryBroker | RabbitBroker) -> None:
    observed = with_middleware(broker, Exploding())
    with (
        captured_logs() as events,
        running(observed, Counted, threads=2) as worker,
    ):
        for n in range(5):
            broker.publish(Work(n=n))
        broker.publish(Work(n=9, kind="broken"))
        wait_until(lambda: worker.stats.handled == 5 and worker.stats.dead_lettered == 1, 20)
        assert worker.threads_alive()
        assert worker.consuming.is_set()
    assert broker.dead_letter_count(Counted) == 1
    failures = [e for e in events if e["event"] == "middleware_hook_failed"]
    assert len(failures) == 2 * (5 + 2)  # started and finished, for every delivery
