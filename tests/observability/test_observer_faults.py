"""Metrics never decide a message's fate: an observer that raises is logged, and the
message is handled, counted and settled as if no observer were there (both brokers)."""

from __future__ import annotations

import pytest

from leveret.services import MemoryBroker, RabbitBroker
from leveret.services.delivery import Outcome
from leveret.services.testing import captured_logs
from tests.observed_actors import Counted, Work
from tests.support import running, wait_until


class Exploding:
    """A WorkerObserver whose every call raises."""

    def started(self, actor: str) -> None:
        raise RuntimeError("observer broken")

    def finished(self, actor: str, outcome: Outcome, duration_s: float) -> None:
        raise RuntimeError("observer broken")


@pytest.mark.rabbitmq
def test_a_raising_observer_changes_nothing(broker: MemoryBroker | RabbitBroker) -> None:
    with (
        captured_logs() as events,
        running(broker, Counted, threads=2, observer=Exploding()) as worker,
    ):
        for n in range(5):
            broker.publish(Work(n=n))
        broker.publish(Work(n=9, kind="broken"))
        wait_until(lambda: worker.stats.handled == 5 and worker.stats.dead_lettered == 1, 20)
        assert worker.threads_alive()
        assert worker.consuming.is_set()
    assert broker.dead_letter_count(Counted) == 1
    failures = [e for e in events if e["event"] == "worker_observer_failed"]
    assert len(failures) == 2 * (5 + 2)  # started and finished, for every delivery
