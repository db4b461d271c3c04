"""The leader's loop: `Scheduler` follows, takes the lead, and sends each tick as it falls due.

The protocol is drawn in the package's docstring (`leveret.services.scheduling`); what the
scheduler needs from a broker is `SchedulerBackend`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from leveret.actors.actor import Actor
from leveret.actors.schedules import Schedule
from leveret.schemas import wire
from leveret.schemas.codec import encode
from leveret.schemas.envelope import Envelope
from leveret.schemas.errors import InvalidArgument, LeveretError, PublishError
from leveret.services.observability.logs import get_logger
from leveret.services.scheduling import state
from leveret.services.scheduling.catch_up import catch_up, plan
from leveret.services.scheduling.state import FUTURE_TOLERANCE_S
from leveret.services.transport import OutgoingMessage, Route

log = get_logger("leveret.scheduler")

DEFAULT_GRACE_S = 60.0
DEFAULT_POLL_S = 1.0
MAX_BATCH = 500


class SchedulerBackend(ABC):
    """What the scheduler needs from a broker: a lock, a durable state, confirmed publishing.

    Every method but `close` may raise `LeveretError` when the broker cannot be reached;
    the scheduler then gives up leading and tries again.
    """

    @abstractmethod
    def acquire(self) -> bool:
        """Try to become the leader now; True when this scheduler leads."""

    @abstractmethod
    def holding(self) -> bool:
        """Whether this scheduler still holds the lock (False once its connection is lost)."""

    @abstractmethod
    def release(self) -> None:
        """Stop leading (another may take over at once)."""

    @abstractmethod
    def load_state(self) -> dict[str, datetime]:
        """The last tick sent of each entry, as stored."""

    @abstractmethod
    def save_state(self, state: dict[str, datetime]) -> None:
        """Store the last tick sent of each entry (durably, confirmed)."""

    @abstractmethod
    def declare(self, actors: Sequence[type[Actor]]) -> None:
        """Declare the target actors' topology (so that sends find their queues)."""

    @abstractmethod
    def publish(self, items: Sequence[OutgoingMessage]) -> list[PublishError | None]:
        """Publish each item, confirmed; each one's error (None when confirmed).

        Raises:
            LeveretError: The broker cannot be reached: nothing is known of the rest.
        """

    @abstractmethod
    def wait(self, seconds: float) -> None:
        """Wait (serving the connection's heartbeats), at most `seconds`."""

    @abstractmethod
    def close(self) -> None:
        """Release the lock and close the connection."""


@dataclass(frozen=True, slots=True)
class SentTick:
    """A tick the scheduler sent: its entry, scheduled time and message id."""

    schedule: str
    scheduled_at: datetime
    message_id: str


class Scheduler:
    """Runs schedules through a backend; see the module for the protocol.

    Args:
        schedules: The entries, or a callable returning them (called again every
            `reload_s` while leading, so entries kept elsewhere, such as a database, can
            change without a restart).
        backend: The broker's lock, state and publishing.
        namespace: For log lines.
        grace_s: Ticks this late are still sent (when a leader takes over, or when the
            clock jumped or the leader stalled); older ones are "missed", and each entry's
            catch-up policy decides. At least 1.
        poll_s: How often a follower tries to take the lead.
        reload_s: How often a leader asks `schedules` again (when it is a callable).
        clock: The current time (aware); the real UTC clock by default.
        on_tick: Called with each tick sent (tests, the in-memory broker).

    Raises:
        InvalidArgument: `grace_s` below 1 or `poll_s` not positive.
    """

    def __init__(
        self,
        schedules: Sequence[Schedule] | Callable[[], Sequence[Schedule]],
        backend: SchedulerBackend,
        *,
        namespace: str = "",
        grace_s: float = DEFAULT_GRACE_S,
        poll_s: float = DEFAULT_POLL_S,
        reload_s: float = 5.0,
        clock: Callable[[], datetime] | None = None,
        on_tick: Callable[[SentTick], None] | None = None,
    ) -> None:
        if not grace_s >= 1:
            raise InvalidArgument(
                f"grace_s must be at least 1 second, not {grace_s!r}: ticks found later than "
                "the grace are missed ticks"
            )
        if not poll_s > 0:
            raise InvalidArgument(f"poll_s must be a positive number of seconds, not {poll_s!r}")
        self._source = schedules
        self.backend = backend
        self.namespace = namespace
        self.grace = timedelta(seconds=grace_s)
        self.poll_s = poll_s
        self.reload_s = reload_s
        self.clock = clock or (lambda: datetime.now(UTC))
        self.on_tick = on_tick
        self.leading = False
        self.sent = 0
        self.tolerance = timedelta(seconds=FUTURE_TOLERANCE_S)
        self._entries: dict[str, Schedule] = {}
        self._cursor: dict[str, datetime] = {}  # the last tick handled, per entry
        self._backlog: list[tuple[datetime, Schedule]] = []
        self._state: dict[str, datetime] = {}  # the last tick sent, per entry (stored)
        self._failing: dict[str, str] = {}  # entries whose times cannot be computed: why
        self._loaded_at = 0.0

    # Following and leading ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Follow, lead when the lock is free, until `stop` is set.

        Broker failures make it give up the lead and try again after `poll_s`; it never
        raises them. Anything else (a bug) is raised, for the caller to stop loudly.
        """
        log.info("scheduler_started", namespace=self.namespace, entries=len(self.entries()))
        try:
            while not stop.is_set():
                try:
                    if not self.leading and not self.take_lead():
                        self.backend.wait(self.poll_s)
                        continue
                    self.step()
                    self.backend.wait(self._pause_s())
                    if not self.backend.holding():
                        self._step_down("lost the lock (its connection closed)")
                except LeveretError as exc:
                    self._step_down(str(exc))
                    stop.wait(self.poll_s)
        finally:
            self.leading = False
            self.backend.close()
            log.info("scheduler_stopped", sent=self.sent)

    def take_lead(self) -> bool:
        """Take the lead if the lock is free: load the state, plan the catch-up.

        Returns:
            Whether this scheduler leads now.

        Raises:
            LeveretError: The broker cannot be reached.
        """
        if not self.backend.acquire():
            return False
        self.leading = True
        self.reload(force=True)
        stored = self.backend.load_state()
        now = self.clock()
        self._state = state.trusted(stored, now, self._entries)
        self._cursor = {}
        self._backlog = []
        for entry in self._entries.values():
            try:
                missed, cursor = plan(entry, self._state.get(entry.name), now, self.grace)
            except Exception as exc:  # noqa: BLE001  # one entry's arithmetic stops no other
                self._failed(entry, exc, now)
                continue
            self._backlog.extend((tick, entry) for tick in missed)
            self._cursor[entry.name] = cursor
        targets = [entry.to for entry in self._entries.values() if entry.to is not None]
        if targets:
            self.backend.declare(list(dict.fromkeys(targets)))
        log.info(
            "scheduler_leading",
            namespace=self.namespace,
            entries=sorted(self._entries),
            catching_up=len(self._backlog),
        )
        return True

    def _step_down(self, reason: str) -> None:
        if self.leading:
            log.warning("scheduler_lost_lead", reason=reason, retry_in_s=self.poll_s)
        self.leading = False
        with contextlib.suppress(LeveretError):  # the connection is gone: so is the lock
            self.backend.release()

    # The leader's work --------------------------------------------------------------------

    def step(self) -> int:
        """Send every tick due now (and the planned catch-up), store the state.

        Returns:
            How many ticks were sent.

        Raises:
            LeveretError: The broker cannot be reached (the ticks not stored are sent
                again by the next leader).
        """
        self.reload()
        now = self.clock()
        due = self._backlog
        self._backlog = []
        for entry in list(self._entries.values()):
            try:
                ticks = self._due(entry, now, room=MAX_BATCH - len(due))
            except Exception as exc:  # noqa: BLE001  # one entry's arithmetic stops no other
                self._failed(entry, exc, now)
                continue
            if ticks and self._failing.pop(entry.name, None) is not None:
                log.info("schedule_resumed", schedule=entry.name)
            due.extend((tick, entry) for tick in ticks)
        if not due:
            return 0
        due.sort(key=lambda item: item[0])
        batch = due[:MAX_BATCH]
        self._backlog = due[MAX_BATCH:]  # a huge catch-up goes out over several steps
        items: list[OutgoingMessage] = []
        built: list[tuple[datetime, Schedule]] = []
        for tick, entry in batch:
            try:
                items.append(self._prepare(entry, tick))
                built.append((tick, entry))
            except Exception as exc:  # noqa: BLE001  # one entry's bug blocks no other
                log.error(
                    "schedule_tick_failed",
                    schedule=entry.name,
                    scheduled_at=tick.isoformat(),
                    error=f"{type(exc).__name__}: {exc}",
                    hint="the message could not be built; this tick is skipped",
                )
                self._advance(entry, tick)
        errors = self.backend.publish(items) if items else []
        sent = 0
        for (tick, entry), item, error in zip(built, items, errors, strict=True):
            self._advance(entry, tick)
            lateness = (now - tick).total_seconds()
            if error is not None:
                log.error(
                    "schedule_tick_failed",
                    schedule=entry.name,
                    scheduled_at=tick.isoformat(),
                    message_id=item.envelope.message_id,
                    error=str(error),
                )
                continue
            sent += 1
            log.info(
                "schedule_tick",
                schedule=entry.name,
                scheduled_at=tick.isoformat(),
                message_id=item.envelope.message_id,
                lateness_s=round(lateness, 3),
            )
            if self.on_tick is not None:
                self.on_tick(SentTick(entry.name, tick, item.envelope.message_id))
        self.backend.save_state(self._bounded_state())
        self.sent += sent
        return sent

    def _due(self, entry: Schedule, now: datetime, *, room: int) -> list[datetime]:
        """The ticks of `entry` to send now, oldest first: the missed ones its catch-up
        policy keeps when its ticks fell behind by more than the grace (the clock stepped
        forward, the leader stalled), then the regular ones (at most `room` of those; the
        others wait for the next step).

        Raises:
            Exception: The entry's times cannot be computed (an overflow).
        """
        cursor = self._cursor.get(entry.name)
        if cursor is None:
            cursor = self._cursor[entry.name] = now  # a new entry: from now on
        elif cursor > now + self.tolerance:
            log.warning(
                "schedule_clock_behind",
                schedule=entry.name,
                last_tick=cursor.isoformat(),
                now=now.isoformat(),
                behind_s=round((cursor - now).total_seconds(), 3),
                hint="this host's clock stepped back (or had run ahead): the entry resumes "
                "from now; ticks sent early are sent again at their time, under the same ids",
            )
            cursor = self._resume(entry, now)
        upcoming = entry.when.after(cursor)
        first = next(upcoming, None)
        missed: list[datetime] = []
        if first is not None and first <= now - self.grace:
            missed, cursor = catch_up(entry, cursor, now, self.grace, reason="late")
            self._cursor[entry.name] = cursor
            upcoming = entry.when.after(cursor)
            first = next(upcoming, None)
        regular: list[datetime] = []
        tick = first
        while tick is not None and tick <= now and len(regular) < room:
            regular.append(tick)
            tick = next(upcoming, None)
        return missed + regular

    def _resume(self, entry: Schedule, now: datetime) -> datetime:
        """Let `entry` go on from `now` (its last tick is not to be trusted)."""
        self._cursor[entry.name] = now
        self._state[entry.name] = now
        return now

    def _failed(self, entry: Schedule, exc: Exception, now: datetime) -> None:
        """An entry's times could not be computed: log it (once per distinct error), and
        let it try again from now at the next step; the other entries go on."""
        error = f"{type(exc).__name__}: {exc}"
        if self._failing.get(entry.name) != error:
            log.error(
                "schedule_failed",
                schedule=entry.name,
                when=str(entry.when),
                now=now.isoformat(),
                error=error,
                hint="this entry's next tick cannot be computed (near the limits of "
                "datetime?); it is skipped and tried again from now, the others go on",
            )
        self._failing[entry.name] = error
        self._cursor[entry.name] = now

    def _bounded_state(self) -> dict[str, datetime]:
        """The state to store, within `MAX_STATE_ENTRIES` (see `state.bounded`)."""
        self._state = state.bounded(self._state, self._entries)
        return self._state

    def _advance(self, entry: Schedule, tick: datetime) -> None:
        if tick > self._cursor.get(entry.name, tick - timedelta(seconds=1)):
            self._cursor[entry.name] = tick
        last = self._state.get(entry.name)
        if last is None or tick > last:
            self._state[entry.name] = tick

    def next_due(self) -> datetime | None:
        """When the next tick falls due (now, if catch-up ticks wait); None if no entry."""
        if self._backlog:
            return self.clock()
        now = self.clock()
        upcoming = [
            self._next_after(entry, self._cursor.get(entry.name, now), now)
            for entry in list(self._entries.values())
        ]
        return min((tick for tick in upcoming if tick is not None), default=None)

    def _next_after(self, entry: Schedule, moment: datetime, now: datetime) -> datetime | None:
        """The entry's first tick after `moment`; None if it has none or it cannot be
        computed (logged)."""
        try:
            return next(entry.when.after(moment), None)
        except Exception as exc:  # noqa: BLE001  # one entry's arithmetic stops no other
            self._failed(entry, exc, now)
            return None

    def _pause_s(self) -> float:
        """Until the next tick (or `poll_s`, to notice a lost lock and reloaded entries)."""
        if self._backlog:
            return 0.0
        now = self.clock()
        pause = self.poll_s
        for entry in list(self._entries.values()):
            cursor = self._cursor.get(entry.name, now)
            upcoming = self._next_after(entry, max(cursor, now), now)
            if upcoming is not None:
                pause = min(pause, (upcoming - now).total_seconds())
        return max(0.0, pause)

    def _prepare(self, entry: Schedule, tick: datetime) -> OutgoingMessage:
        message = entry.message_for(tick)
        message_id = entry.message_id(tick)
        envelope = Envelope(
            message_id=message_id,
            topic=message.topic(),
            correlation_id=message_id,
            timestamp=tick,
            headers={wire.SCHEDULE: entry.name, wire.SCHEDULED_AT: tick.isoformat()},
        )
        queue = entry.to.queue if entry.to is not None else None
        return OutgoingMessage(envelope, encode(message), Route(message.topic(), queue=queue), 0)

    # Entries ------------------------------------------------------------------------------

    def entries(self) -> list[Schedule]:
        """The entries now (asking the callable, if one was given)."""
        self.reload()
        return list(self._entries.values())

    def reload(self, *, force: bool = False) -> None:
        """Ask the schedules callable again (every `reload_s`, or now with `force`).

        An entry that appears starts from now; one whose definition changed continues
        from its last tick; one that disappears stops (its stored tick is kept).
        """
        if not callable(self._source):
            if not self._entries:
                self._entries = {entry.name: entry for entry in self._source}
            return
        if not force and time.monotonic() - self._loaded_at < self.reload_s and self._entries:
            return
        self._loaded_at = time.monotonic()
        try:
            fresh = {entry.name: entry for entry in self._source()}
        except LeveretError:
            raise
        except Exception as exc:  # noqa: BLE001  # a source's bug: keep the entries known
            log.error("schedules_reload_failed", error=f"{type(exc).__name__}: {exc}")
            return
        added = sorted(set(fresh) - set(self._entries))
        removed = sorted(set(self._entries) - set(fresh))
        changed = sorted(
            name
            for name in set(fresh) & set(self._entries)
            if _definition(fresh[name]) != _definition(self._entries[name])
        )
        if self._entries and (added or removed or changed):
            log.info("schedules_changed", added=added, removed=removed, changed=changed)
        self._entries = fresh
        for name in removed:
            self._cursor.pop(name, None)
            self._failing.pop(name, None)
        self._backlog = [(tick, entry) for tick, entry in self._backlog if entry.name in fresh]

    def close(self) -> None:
        """Stop leading and close the backend."""
        self.leading = False
        self.backend.close()


def _definition(entry: Schedule) -> tuple[object, ...]:
    return (str(entry.when), entry.to, entry.catch_up, entry.max_catch_up)
