"""Internal: declarations callers ask the publisher for, made on its connection.

A caller (`Publisher.declare`) queues what to declare and waits on a future. Once the
publisher's channel is ready, each queued declaration is made on a channel of its own
(`_declare.declarer`), so that a refusal closes only that channel. A declaration whose
channel had not opened when the connection was lost is queued again for the next one.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future

from pika.adapters.select_connection import SelectConnection

from leveret.schemas.errors import TopologyError
from leveret.services.rabbitmq._declare import declarer
from leveret.services.topology.declarations import Step


class DeclarationQueue:
    """Declarations asked for and not done: queued, then declaring (I/O thread, but for
    `add`)."""

    def __init__(self) -> None:
        self._queued: deque[tuple[list[Step], Future[None]]] = deque()
        # Declarations on their way (on a channel of their own), with what they declare.
        self._declaring: dict[Future[None], list[Step]] = {}
        self.since: dict[Future[None], float] = {}
        """Declarations asked for and not done, with when (monotonic): what fails at its
        deadline while the broker cannot be reached (`_outage`)."""

    def add(self, todo: list[Step]) -> Future[None]:
        """Queue `todo` (any thread); the future is settled once it is declared, refused or
        failed. `run` it on the I/O thread next."""
        future: Future[None] = Future()
        self.since[future] = time.monotonic()
        future.add_done_callback(self.since.pop)
        self._queued.append((todo, future))
        return future

    def busy(self) -> bool:
        """Whether a declaration is queued or on its way."""
        return bool(self._queued) or bool(self._declaring)

    def run(self, connection: SelectConnection) -> None:
        """Declare what is queued, each on a new channel of `connection`."""
        queued = self._queued
        while queued:
            todo, future = queued.popleft()
            if future.done():
                continue  # failed meanwhile (the broker was unreachable): its caller knows
            self._declaring[future] = todo
            future.add_done_callback(self._forget)
            connection.channel(on_open_callback=declarer(todo, future, retry=queued.append))

    def requeue_unopened(self) -> None:
        """The connection is lost: a declaration whose channel had not opened yet is told
        nothing by pika, so it is queued again for the next connection (one whose channel
        opened retries by itself; a future is settled once, see `_declare.declarer`)."""
        for future, todo in list(self._declaring.items()):
            if not future.done() and not any(f is future for _t, f in self._queued):
                self._queued.append((todo, future))
        self._declaring.clear()

    def fail_all(self, reason: str) -> None:
        """Fail every declaration not done with `TopologyError(reason)`."""
        for future in [future for _todo, future in self._queued] + list(self._declaring):
            if not future.done():
                future.set_exception(TopologyError(reason))
        self._queued.clear()
        self._declaring.clear()

    def _forget(self, future: Future[None]) -> None:
        self._declaring.pop(future, None)
