"""What the dashboard's pages read from: the broker, one operation at a time, the last
snapshot of the namespace, and what is known while the broker cannot be reached.

Reading from the broker blocks, so it runs in worker threads, one operation at a time (a
lock): a dashboard never puts more than one extra connection's load on the broker, however
many people look. And no page waits for the broker longer than `Dashboard.broker_wait_s`
(the broker being down is a normal day, and exactly when an operator opens the page):

- The overview, the JSON API and an actor's page ask `Dashboard.current`. A snapshot is
  taken in a thread of its own (one at a time, shared by every request); a request waits
  for it at most `broker_wait_s` (the first one also the first look's wait for heartbeats),
  then answers with what is known: the last snapshot and when it was taken, the management
  API's queue figures if it answers while AMQP does not, or nothing, with the `Outage`.
  While the broker is known to be unreachable, it waits `OUTAGE_WAIT_S` at most.
- A dead-letter operation (`Dashboard.call`) waits for the one before it at most
  `broker_wait_s`, and not at all while the broker is known to be unreachable: it then
  fails with `Busy`, or with the broker's error.
- Opening a connection is bounded too (``leveret.services.rabbitmq._admin``,
  ``CONNECT_TIMEOUT_S``): a broker whose packets are dropped fails within seconds, as one
  that refuses does at once. After a failure the next refresh starts no sooner than
  `RETRY_AFTER_S`, so the page's live refresh recovers by itself when the broker is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from leveret.actors import Actor
from leveret.actors.schedules import Schedule
from leveret.schemas.errors import BrokerConnectionError, BrokerError, InvalidArgument
from leveret.services import config
from leveret.services.broker import Broker
from leveret.services.observability.logs import get_logger
from leveret.services.observability.redaction import redact
from leveret.services.operations.status import Snapshot, StatusReader, Warning
from leveret.services.rabbitmq.management import ManagementUnavailable

log = get_logger("leveret.dashboard")

T = TypeVar("T")

BROKER_WAIT_S = 3.0
"""The longest a page waits for the broker before it answers with what is known."""
SNAPSHOT_MAX_AGE_S = 1.0
"""Requests within this long of the last snapshot share it."""
RETRY_AFTER_S = 1.0
"""After a failed refresh, the next one starts no sooner than this."""
OUTAGE_WAIT_S = 1.0
"""While the broker is known to be unreachable, a page waits this long at most for it (a
broker that is back answers well within it; one still down costs no page more)."""
SCHEDULE_STATE_MAX_AGE_S = 10.0
"""The scheduler's stored state (last ticks) is read at most this often."""


class Busy(Exception):
    """A dead-letter operation waited `Dashboard.broker_wait_s` for the one before it (or
    the broker is known to be unreachable and another operation is still trying it)."""


@dataclass(frozen=True)
class Outage:
    """The broker cannot be reached, or has not answered for `Dashboard.broker_wait_s`.

    Attributes:
        url: The URL tried (every node's, for a cluster), password hidden.
        error: What failed (password hidden), or for how long nothing answered.
        since: When it began (seconds since the epoch): the first failure in a row.
        unreachable: The connection failed (else the broker answered with an error, or
            the dashboard failed reading it).
        pending: Nothing failed yet: the broker has not answered for a while.
    """

    url: str
    error: str
    since: float
    unreachable: bool = True
    pending: bool = False


@dataclass(frozen=True)
class Known:
    """What a page shows.

    Attributes:
        snapshot: The namespace as last seen (None: nothing known). While the broker cannot
            be reached and the management API answers, its queue figures (taken now) with
            the workers of the last snapshot, if any.
        prior: The snapshot before it (for rates), if any.
        outage: Why the broker is not being read now, if it is not.
        from_management: `snapshot`'s queue figures come from the management API alone.
        workers_at: When the workers shown were seen, when they come from an earlier
            snapshot than the queue figures.
    """

    snapshot: Snapshot | None
    prior: Snapshot | None = None
    outage: Outage | None = None
    from_management: bool = False
    workers_at: float | None = None

    def banner(self) -> str | None:
        """One paragraph saying the broker cannot be reached, and what is shown instead."""
        outage = self.outage
        if outage is None:
            return None
        for_s = max(0, round(time.time() - outage.since))
        if outage.pending:
            text = f"The broker at {outage.url} has not answered for {for_s} s."
        elif outage.unreachable:
            text = (
                f"The broker cannot be reached at {outage.url} (since {_iso(outage.since)}, "
                f"{for_s} s): {outage.error}."
            )
        else:
            text = f"Reading the broker at {outage.url} failed: {outage.error}."
        if self.snapshot is None:
            return f"{text} Nothing is known yet."
        if self.from_management:
            workers = (
                f"workers as last seen at {_iso(self.workers_at)}"
                if self.workers_at is not None
                else "no workers known (their heartbeats are read over AMQP)"
            )
            return (
                f"{text} Queue figures from the management API (taken "
                f"{_iso(self.snapshot.taken_at)}); {workers}."
            )
        return f"{text} Showing the last snapshot, taken at {_iso(self.snapshot.taken_at)}."

    def outage_json(self) -> dict[str, Any] | None:
        """The outage for the JSON API (None while the broker answers)."""
        if self.outage is None:
            return None
        return {
            "url": self.outage.url,
            "error": self.outage.error,
            "since": _iso(self.outage.since),
            "pending": self.outage.pending,
            "message": self.banner(),
        }


@dataclass
class Dashboard:
    """What the pages read from: the broker, and the settings.

    Args:
        broker: The namespace's broker.
        read_only: Hide and refuse every action (replay, purge).
        actors: Actor classes (from the modules given on the command line): their handlers
            and topics are shown, and their queues listed even when no worker runs.
        schedules: Schedule entries (from the same modules): each with its last tick sent
            (the scheduler's stored state) and its next one.
        refresh_s: How often the overview refreshes itself in the browser.
        management_url: As for `StatusReader` (None: the broker host's default; "": AMQP
            only).
        broker_wait_s: The longest a page waits for the broker before it answers with what
            is known.
        extra_warnings: As for `StatusReader`: warnings of the embedding program (the
            Django app's outbox backlog).

    Raises:
        InvalidArgument: `broker_wait_s` is not a positive number of seconds.
    """

    broker: Broker
    read_only: bool = False
    actors: Sequence[type[Actor]] = ()
    schedules: Sequence[Schedule] = ()
    refresh_s: float = 3.0
    management_url: str | None = None
    broker_wait_s: float = BROKER_WAIT_S
    extra_warnings: Callable[[], Sequence[Warning]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    """One broker operation at a time."""
    _guard: threading.Lock = field(default_factory=threading.Lock, init=False)
    """The fields below (held for moments, never across a broker call)."""
    _reader: StatusReader = field(init=False)
    _snapshot: Snapshot | None = field(default=None, init=False)
    _prior: Snapshot | None = field(default=None, init=False)  # the one before: rates
    _taken: float = field(default=0.0, init=False)
    _management: Snapshot | None = field(default=None, init=False)
    _outage: Outage | None = field(default=None, init=False)
    _failed_at: float = field(default=0.0, init=False)
    _refresh: threading.Event | None = field(default=None, init=False)
    _talking_since: float | None = field(default=None, init=False)
    _talking_limit_s: float = field(default=0.0, init=False)
    _last_ticks: dict[str, datetime] | None = field(default=None, init=False)
    _ticks_note: str = field(default="", init=False)
    _ticks_read: float = field(default=-SCHEDULE_STATE_MAX_AGE_S, init=False)

    def __post_init__(self) -> None:
        wait_s = self.broker_wait_s
        if not config.positive_seconds(wait_s):
            raise InvalidArgument(
                f"broker_wait_s must be a positive number of seconds, not {wait_s!r}"
            )
        self._reader = StatusReader(
            self.broker,
            actors=[actor.queue for actor in self.actors],
            management_url=self.management_url,
            sample_s=0,
            amqp_figures=False,
            extra_warnings=self.extra_warnings,
        )

    # What pages show ------------------------------------------------------------------

    async def current(self) -> Known:
        """What is known of the namespace now: a fresh snapshot when the broker answers
        within `broker_wait_s` (shared by the requests of the same second)."""
        done = self._start_refresh()
        if done is not None:
            with self._guard:
                known_down = self._outage is not None
                first = self._snapshot is None and not known_down
            if known_down:
                wait_s = min(self.broker_wait_s, OUTAGE_WAIT_S)
            else:
                wait_s = self.broker_wait_s + (self._reader.first_wait_s if first else 0.0)
            await run_in_threadpool(done.wait, wait_s)
        return self.known()

    def known(self) -> Known:
        """What is known, without asking the broker."""
        now = time.monotonic()
        with self._guard:
            outage = self._outage
            if (
                outage is None
                and self._talking_since is not None
                and now - self._talking_since >= self._talking_limit_s
            ):
                outage = Outage(
                    url=redact(self.broker.url),
                    error=f"no answer for {now - self._talking_since:.0f} s",
                    since=time.time() - (now - self._talking_since),
                    pending=True,
                )
            snapshot, prior, management = self._snapshot, self._prior, self._management
        if outage is None:
            return Known(snapshot, prior)
        if management is not None:
            if snapshot is None:
                return Known(management, outage=outage, from_management=True)
            workers = [w for w in snapshot.warnings if w.kind.startswith("worker_")]
            merged = replace(
                management,
                workers=snapshot.workers,
                warnings=[*management.warnings, *workers],
            )
            return Known(merged, outage=outage, from_management=True, workers_at=snapshot.taken_at)
        return Known(snapshot, outage=outage)

    def ticks_known(self) -> tuple[dict[str, datetime] | None, str]:
        """What `last_ticks` last read (nothing is read here)."""
        return self._last_ticks, self._ticks_note

    def actor_class(self, queue: str) -> type[Actor] | None:
        return next((a for a in self.actors if a.queue == queue), None)

    # Broker operations ----------------------------------------------------------------

    async def call(self, function: Callable[[], T]) -> T:
        """Run a blocking broker operation in a thread, one at a time.

        Raises:
            Busy: The operation before it held the broker for `broker_wait_s` (or at all,
                while the broker is known to be unreachable).
            BrokerConnectionError: The broker cannot be reached (now, or a moment ago).
        """

        def locked() -> T:
            with self._guard:
                outage = self._outage
            wait_s = 0.0 if outage is not None else self.broker_wait_s
            if not self._lock.acquire(timeout=wait_s):
                raise Busy(
                    "another operation has been waiting for the broker"
                    if outage is None
                    else "the broker cannot be reached, and another operation is trying it"
                )
            try:
                with self._guard:
                    recent = self._outage is not None and (
                        time.monotonic() - self._failed_at < RETRY_AFTER_S
                    )
                    outage = self._outage
                if recent and outage is not None and outage.unreachable:
                    # It failed a moment ago: say so at once rather than wait for it again.
                    raise BrokerConnectionError(outage.error)
                try:
                    result = function()
                except BrokerConnectionError as exc:
                    self._failed(exc)
                    raise
                self._answered()
                return result
            finally:
                self._lock.release()

        return await run_in_threadpool(locked)

    def _start_refresh(self) -> threading.Event | None:
        """The event set when the snapshot being taken is done; None when the last one is
        fresh enough (or failed a moment ago)."""
        now = time.monotonic()
        with self._guard:
            if self._refresh is not None:
                return self._refresh
            if self._outage is None:
                if self._snapshot is not None and now - self._taken < SNAPSHOT_MAX_AGE_S:
                    return None
            elif now - self._failed_at < RETRY_AFTER_S:
                return None
            done = self._refresh = threading.Event()
        threading.Thread(
            target=self._refresh_now, args=(done,), name="leveret-dashboard-refresh", daemon=True
        ).start()
        return done

    def _refresh_now(self, done: threading.Event) -> None:
        """Take a snapshot (in its own thread); nothing it raises ends the thread unseen."""
        try:
            with self._lock:
                with self._guard:
                    self._talking_since = time.monotonic()
                    # The first look listens for heartbeats: not a broker that is silent.
                    first_s = self._reader.first_wait_s if self._snapshot is None else 0.0
                    self._talking_limit_s = self.broker_wait_s + first_s
                self._take()
        except Exception as exc:  # shown on the page, logged with its traceback
            error = redact(f"{type(exc).__name__}: {exc}")
            log.exception("dashboard_refresh_failed", error=error)
            self._failed(exc)
        finally:
            with self._guard:
                self._refresh = None
                self._talking_since = None
            done.set()

    def _take(self) -> None:
        """A snapshot, or the management API's figures when AMQP fails; lock held."""
        try:
            snapshot = self._reader.take()
        except BrokerError as exc:
            self._failed(exc)
            try:
                management = self._reader.take_from_management()
            except ManagementUnavailable:
                management = None
            with self._guard:
                self._management = management
            return
        with self._guard:
            self._prior, self._snapshot = self._snapshot, snapshot
            self._taken = time.monotonic()
            self._management = None
        self._answered()
        if self.schedules:
            self.last_ticks()

    def _failed(self, exc: BaseException) -> None:
        """Remember that the broker could not be read (logged when an outage begins)."""
        error = redact(f"{type(exc).__name__}: {exc}")
        url = redact(self.broker.url)
        with self._guard:
            began = self._outage is None
            since = self._outage.since if self._outage is not None else time.time()
            self._outage = Outage(
                url=url,
                error=error,
                since=since,
                unreachable=isinstance(exc, BrokerConnectionError),
            )
            self._failed_at = time.monotonic()
        if began:
            log.warning("dashboard_broker_unreachable", url=url, error=error)

    def _answered(self) -> None:
        """The broker answered: an outage is over."""
        with self._guard:
            outage, self._outage = self._outage, None
        if outage is not None:
            log.info(
                "dashboard_broker_reachable",
                url=outage.url,
                unreachable_s=round(time.time() - outage.since, 1),
            )

    def last_ticks(self) -> tuple[dict[str, datetime] | None, str]:
        """The last tick each schedule sent (the scheduler's stored state), read at most
        every `SCHEDULE_STATE_MAX_AGE_S`; lock held. None and why when it cannot be read."""
        if time.monotonic() - self._ticks_read >= SCHEDULE_STATE_MAX_AGE_S:
            self._ticks_read = time.monotonic()
            try:
                self._last_ticks, self._ticks_note = self.broker.schedule_state(), ""
            except Exception as exc:  # noqa: BLE001  # shown on the page, the rest goes on
                self._last_ticks = None
                self._ticks_note = redact(f"{type(exc).__name__}: {exc}")
        return self.ticks_known()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
