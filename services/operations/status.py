"""`leveret status`: one picture of a namespace, its workers, its queues and what is wrong.

`collect` takes a `Snapshot`: the workers from their heartbeats (every server, stale ones
marked), the actor queues with their figures and dead letters, and `Warning`s:

- ``queue_without_consumer``: a queue holds messages and nobody consumes it;
- ``dead_letters_growing``: an actor's ``.dlq`` grew since the previous look (or its
  incoming rate is above zero, from the management API);
- ``worker_stale``: a worker's heartbeats stopped (it was killed, hangs, or lost the broker)
  for `STALE_AFTER_INTERVALS` of its intervals;
- ``worker_not_consuming``: a worker says it is connected but not consuming (or not
  connected): the "silently stopped consuming" failure;
- ``queues_left_out``: heartbeats listed queue names status does not show (not actor
  queues of the namespace, past its bounds, or not on the broker).

Queue figures come from RabbitMQ's management API when it answers (unacked, rates), else
from AMQP alone (ready and consumers); the snapshot says which. Heartbeats are untrusted
(any client can publish to the exchange): each is validated, and what does not validate is
counted and skipped; the queue names they list are bounded before the broker is asked
about them (`status_queues`), and what is left out is counted and warned about
(``queues_left_out``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from leveret.services.broker import Broker
from leveret.services.observability.redaction import printable, redact, shown
from leveret.services.operations.heartbeats import DEFAULT_INTERVAL_S, STALE_AFTER_INTERVALS
from leveret.services.operations.status_queues import (
    MAX_PROBED_QUEUES,
    MAX_QUEUES_PER_HEARTBEAT,
    actor_queue,
    claimed_queues,
    plan,
)
from leveret.services.rabbitmq.management import (
    ManagementAPI,
    ManagementUnavailable,
    default_management_url,
)
from leveret.services.topology import naming
from leveret.services.topology.declarations import at_least_once_policy_command
from leveret.services.transport import QueueFigures

MAX_WORKERS = 10_000
"""Distinct worker ids kept from one read; more are ignored (and counted)."""
CLOCK_TOLERANCE_S = 5.0
"""How far ahead of the reader's clock a heartbeat's ``sent_at`` is believed."""
MAX_HEARTBEAT_BYTES = 64 * 1024
"""A real heartbeat is under 1 KiB (plus its queue names); larger ones are not parsed."""


_Count = Annotated[int, Field(ge=0, le=2**63)]


class _Heartbeat(BaseModel):
    """A heartbeat as it must look to be shown; extra fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    state: str = Field(default="running", max_length=32)
    host: str = Field(default="", max_length=255)
    address: str | None = Field(default=None, max_length=300)
    pid: _Count = 0
    version: str = Field(default="", max_length=64)
    actors: list[str] = Field(default_factory=list, max_length=10_000)
    queues: list[str] = Field(default_factory=list, max_length=10_000)
    threads: _Count = 0
    prefetch: _Count = 0
    in_flight: _Count = 0
    handled: _Count = 0
    retried: _Count = 0
    dead_lettered: _Count = 0
    answered: _Count = 0  # not in heartbeats of Leveret before asks
    expired: _Count = 0
    last_error: str | None = Field(default=None, max_length=2000)
    memory_bytes: _Count = 0
    uptime_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    sent_at: float = Field(ge=0, allow_inf_nan=False)  # before 1970: not a heartbeat
    interval_s: float = Field(default=DEFAULT_INTERVAL_S, gt=0, le=3600)
    connected: bool = True
    consuming: bool = True


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker process, from its latest heartbeat.

    Attributes:
        stale: No heartbeat for `STALE_AFTER_INTERVALS` of its intervals.
        age_s: Seconds since its latest heartbeat was sent (by its clock).
    """

    id: str
    host: str
    address: str | None
    pid: int
    version: str
    state: str
    actors: list[str]
    queues: list[str]
    threads: int
    prefetch: int
    in_flight: int
    handled: int
    retried: int
    dead_lettered: int
    answered: int
    expired: int
    last_error: str | None
    memory_bytes: int
    uptime_s: float
    connected: bool
    consuming: bool
    last_seen: float
    age_s: float
    stale: bool


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One actor queue and its dead letters.

    Attributes:
        actor: The queue's name without namespace.
        name: Its full name.
        figures: What the broker says of it (None: the queue does not exist, or, from the
            management API alone, its figures are not known yet).
        dead_letters: Messages in its ``.dlq`` (None: no ``.dlq``, or not known yet).
        dead_letters_per_s: Messages arriving in its ``.dlq`` per second (None: not known
            over AMQP).
    """

    actor: str
    name: str
    figures: QueueFigures | None
    dead_letters: int | None
    dead_letters_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class Warning:
    """Something an operator should look at.

    Attributes:
        kind: ``queue_without_consumer``, ``dead_letters_growing``,
            ``dead_letters_at_most_once``, ``worker_stale``, ``worker_not_consuming`` or
            ``queues_left_out``; or one a caller adds (`StatusReader.extra_warnings`): the
            Django app's ``outbox_backlog``, ``outbox_failed``, ``outbox_unreadable``.
        subject: The queue or worker it is about.
        message: One line for people.
    """

    kind: Literal[
        "queue_without_consumer",
        "dead_letters_growing",
        "dead_letters_at_most_once",
        "worker_stale",
        "worker_not_consuming",
        "queues_left_out",
        "outbox_backlog",
        "outbox_failed",
        "outbox_unreadable",
    ]
    subject: str
    message: str


@dataclass(slots=True)
class Snapshot:
    """The namespace at one moment.

    Attributes:
        source: Where queue figures came from: ``management`` or ``amqp``.
        source_note: Why AMQP was used when the management API was tried, or the API's URL.
        ignored_heartbeats: Messages on the heartbeats route that were not valid heartbeats.
        queues_left_out: Queue names heartbeats listed that are not shown, by reason
            (`leveret.services.operations.status_queues.LeftOut`): ``not_actor_queues``,
            ``past_limits``, ``not_on_broker``.
    """

    namespace: str
    taken_at: float
    workers: list[WorkerRow]
    queues: list[QueueRow]
    warnings: list[Warning]
    source: Literal["management", "amqp", "memory"]
    source_note: str = ""
    ignored_heartbeats: int = 0
    queues_left_out: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (``leveret status --json``)."""
        data = asdict(self)
        data["taken_at"] = _iso(self.taken_at)
        for worker in data["workers"]:
            worker["last_seen"] = _iso(worker["last_seen"])
        return data


@dataclass(slots=True)
class StatusReader:
    """Takes snapshots of `broker`'s namespace, remembering the last one (for ``--watch``).

    Args:
        broker: The namespace's broker.
        actors: Queue names (without namespace) to show besides those live workers consume
            (and, with the management API, every actor queue of the namespace): always
            shown and asked first, whatever heartbeats list (`status_queues`).
        management_url: The management API's URL; None for the default one of the broker's
            host; ``""`` for AMQP only.
        first_wait_s: How long the first look at a namespace waits for heartbeats.
        sample_s: Without rates from the management API, a single look samples the
            ``.dlq``s twice this far apart to see whether they grow (0: once only).
        amqp_figures: Ask the queues over AMQP too (exact and current, one round trip
            per queue, at most `status_queues.MAX_PROBED_QUEUES` besides the given
            actors'; the management API's figures for the others). False: trust the
            management API's figures (up to 5 s old) and ask over AMQP only for the given
            actors it does not list; the dashboard's choice, where a namespace of hundreds
            of queues must render in well under a second.
        extra_warnings: Called at each snapshot for warnings the caller knows of (the
            Django app's outbox backlog), added after the snapshot's own.
    """

    broker: Broker
    actors: Sequence[str] = ()
    management_url: str | None = None
    first_wait_s: float = DEFAULT_INTERVAL_S + 1
    sample_s: float = 2.0
    amqp_figures: bool = True
    extra_warnings: Callable[[], Sequence[Warning]] | None = None
    previous: Snapshot | None = None
    _management: ManagementAPI | None = field(default=None, init=False)

    def take(self) -> Snapshot:
        """A new snapshot (the first may wait `first_wait_s` for heartbeats)."""
        started = time.monotonic()
        namespace = self.broker.namespace
        source, note, figures, uncounted, complete = self._figures_listed()
        bodies = self.broker.transport.inspection.recent_heartbeats(self.first_wait_s)
        now = time.time()
        arrived, ignored = _parse(bodies, now)
        # What heartbeats list is bounded before the broker is asked anything about it.
        claims = claimed_queues(namespace, [(row.id, row.queues) for row in arrived])
        workers = _sorted([replace(row, queues=claims.by_worker[row.id]) for row in arrived])
        # A given actor is asked over AMQP unless the API has counted its queue and its
        # .dlq: a queue declared a moment ago is listed without counts (`queue_counts`).
        listed = [
            short
            for full in figures
            if (short := actor_queue(namespace, full))
            and (short not in self.actors or not {full, self._dlq(short)} & uncounted)
        ]
        looked = plan(
            given=self.actors,
            listed=listed,
            claims=claims,
            listing_complete=source == "management" and complete,
            probe_listed=self.amqp_figures or source != "management",
        )
        # Ready and consumers from AMQP: the broker's own answer now, where the management
        # API's figures lag by up to its collection interval (5 s). The API adds what AMQP
        # cannot tell: unacked messages and rates (and the figures of queues past the bound
        # of those asked over AMQP).
        asked = self._probe(looked.probed, looked.unverified)
        figures = {**figures, **_merged(asked, figures)}
        found = {queue for queue in looked.unverified if self._full(queue) in figures}
        looked.left_out.not_on_broker += len(looked.unverified - found)
        for name in uncounted - asked.keys():  # not known yet: never shown as 0
            del figures[name]
        queue_names = sorted({*looked.known, *found})
        growing: set[str] = set()
        if self.previous is not None:
            growing = _grown(self.previous, figures, self._dlq)
        elif source != "management" and self.sample_s > 0:
            wait_s = self.sample_s - (time.monotonic() - started)
            if wait_s > 0:
                time.sleep(wait_s)
            dlqs = [self._dlq(q) for q in queue_names if self._dlq(q) in figures]
            again = self.broker.transport.inspection.queue_figures(dlqs)
            growing = {
                dlq for dlq in dlqs if dlq in again and again[dlq].ready > figures[dlq].ready
            }
            figures.update(again)
        rows = self._rows(queue_names, figures)
        snapshot = Snapshot(
            namespace=namespace,
            taken_at=now,
            workers=workers,
            queues=rows,
            warnings=[],
            source=source,
            source_note=note,
            ignored_heartbeats=ignored,
            queues_left_out=asdict(looked.left_out),
        )
        snapshot.warnings = warnings_of(snapshot, growing_dlqs=growing, dlq_of=self._dlq)
        if self.extra_warnings is not None:
            snapshot.warnings += self.extra_warnings()
        self.previous = snapshot
        return snapshot

    def _probe(self, queues: Sequence[str], unverified: set[str]) -> dict[str, QueueFigures]:
        """Figures over AMQP of `queues` and their ``.dlq``s; the ``.dlq`` of a queue only
        heartbeats name is asked only once the queue is found (a missing queue costs the
        most: the broker closes the channel)."""
        inspection = self.broker.transport.inspection
        first = [self._full(q) for q in queues]
        first += [self._dlq(q) for q in queues if q not in unverified]
        found = inspection.queue_figures(first)
        later = [self._dlq(q) for q in queues if q in unverified and self._full(q) in found]
        if later:
            found.update(inspection.queue_figures(later))
        return found

    def take_from_management(self) -> Snapshot:
        """A snapshot from the management API alone, for when AMQP cannot be reached: the
        actor queues it lists (and those given) with its figures, and no workers (their
        heartbeats are read over AMQP). Nothing is remembered for the next `take`.

        Raises:
            ManagementUnavailable: The API is not used (AMQP only) or does not answer.
        """
        source, note, figures, uncounted, _complete = self._figures_listed()
        if source != "management":
            raise ManagementUnavailable(note or "no management API for this broker")
        namespace = self.broker.namespace
        listed = {short for full in figures if (short := actor_queue(namespace, full))}
        counted = {name: f for name, f in figures.items() if name not in uncounted}
        rows = self._rows(sorted({*self.actors, *listed}), counted)  # the rest: not known
        snapshot = Snapshot(
            namespace=self.broker.namespace,
            taken_at=time.time(),
            workers=[],
            queues=rows,
            warnings=[],
            source=source,
            source_note=note,
        )
        snapshot.warnings = warnings_of(snapshot, growing_dlqs=set(), dlq_of=self._dlq)
        if self.extra_warnings is not None:
            snapshot.warnings += self.extra_warnings()
        return snapshot

    def _figures_listed(
        self,
    ) -> tuple[
        Literal["management", "amqp", "memory"], str, dict[str, QueueFigures], set[str], bool
    ]:
        """Where figures come from, a note, the management API's figures of the namespace's
        queues (one listing, no round trip per queue), the queues it lists without counts
        yet (`ManagementAPI.queue_counts`), and whether it listed them all."""
        url = self.broker.url
        if url.startswith("memory:"):
            return "memory", "", {}, set(), False
        if self.management_url == "":
            return "amqp", "management API not used (--no-management)", {}, set(), False
        api_url = self.management_url or default_management_url(url)
        try:
            if self._management is None:
                self._management = ManagementAPI(api_url, url)
            listing = self._management.queue_counts(self.broker.namespace + ".")
        except (ManagementUnavailable, ValueError) as exc:
            return "amqp", f"management API not used: {shown(str(exc))}", {}, set(), False
        figures, uncounted, complete = listing
        note = f"management API at {self._management.safe_url}"
        return "management", note, figures, uncounted, complete

    def _rows(self, queues: Iterable[str], figures: dict[str, QueueFigures]) -> list[QueueRow]:
        """A row of each actor queue (without namespace): its figures and its ``.dlq``'s."""
        rows = []
        for queue in queues:
            dlq = figures.get(self._dlq(queue))
            rows.append(
                QueueRow(
                    actor=queue,
                    name=self._full(queue),
                    figures=figures.get(self._full(queue)),
                    dead_letters=dlq.ready if dlq is not None else None,
                    dead_letters_per_s=dlq.incoming_per_s if dlq is not None else None,
                )
            )
        return rows

    def _full(self, queue: str) -> str:
        return naming.queue_name(self.broker.namespace, queue)

    def _dlq(self, queue: str) -> str:
        return naming.dlq_name(self.broker.namespace, queue)


def _merged(
    amqp: dict[str, QueueFigures], management: dict[str, QueueFigures]
) -> dict[str, QueueFigures]:
    """AMQP's ready and consumers with the management API's unacked and rates."""
    merged = {}
    for name, now in amqp.items():
        extra = management.get(name)
        merged[name] = (
            now if extra is None else replace(extra, ready=now.ready, consumers=now.consumers)
        )
    return merged


def parse_workers(bodies: Iterable[bytes], now: float) -> tuple[list[WorkerRow], int]:
    """The latest heartbeat of each worker, as rows sorted by host, address, pid and id;
    and how many messages were ignored. See `_parse`."""
    rows, ignored = _parse(bodies, now)
    return _sorted(rows), ignored


def _sorted(rows: list[WorkerRow]) -> list[WorkerRow]:
    return sorted(rows, key=lambda row: (row.host, row.address or "", row.pid, row.id))


def _parse(bodies: Iterable[bytes], now: float) -> tuple[list[WorkerRow], int]:
    """The latest heartbeat of each worker, as rows in the order those heartbeats arrived;
    and how many messages were ignored.

    `bodies` come in the order they arrived. Of a worker id's heartbeats the one that
    arrived last counts, whatever its ``sent_at`` says: anyone can write a far-future
    ``sent_at`` (or a worker's id and ``state: stopped``), nobody can make a heartbeat
    arrive after the worker's next one. A worker whose latest heartbeat says ``stopped``
    left cleanly and is not shown. A ``sent_at`` ahead of `now` counts as at most
    `CLOCK_TOLERANCE_S` ahead.
    """
    latest: dict[str, _Heartbeat] = {}
    ignored = 0
    for body in bodies:
        if len(body) > MAX_HEARTBEAT_BYTES:
            ignored += 1
            continue
        try:
            beat = _Heartbeat.model_validate(json.loads(body))
        except (ValueError, ValidationError, RecursionError):
            ignored += 1
            continue
        if not math.isfinite(beat.sent_at):
            ignored += 1
            continue
        if latest.pop(beat.id, None) is None and len(latest) >= MAX_WORKERS:
            ignored += 1
            continue
        latest[beat.id] = beat  # last: the order of arrival
    rows = []
    for beat in latest.values():
        if beat.state == "stopped":
            continue
        sent_at = min(beat.sent_at, now + CLOCK_TOLERANCE_S)
        age_s = max(0.0, now - sent_at)
        rows.append(
            WorkerRow(
                # Every string is the publisher's: shown with control and invisible
                # characters escaped (a terminal, a file, a page), and passwords hidden.
                id=shown(beat.id),
                host=shown(beat.host),
                address=shown(beat.address) if beat.address is not None else None,
                pid=beat.pid,
                version=shown(beat.version),
                state=shown(beat.state),
                actors=[shown(actor) for actor in beat.actors],
                queues=[shown(queue) for queue in beat.queues],
                threads=beat.threads,
                prefetch=beat.prefetch,
                in_flight=beat.in_flight,
                handled=beat.handled,
                retried=beat.retried,
                dead_lettered=beat.dead_lettered,
                answered=beat.answered,
                expired=beat.expired,
                # Redacted again: a worker of another version, or anyone, may have sent it so.
                last_error=(
                    printable(redact(beat.last_error), keep_newlines=True)
                    if beat.last_error
                    else beat.last_error
                ),
                memory_bytes=beat.memory_bytes,
                uptime_s=beat.uptime_s,
                connected=beat.connected,
                consuming=beat.consuming,
                last_seen=sent_at,
                age_s=round(age_s, 1),
                stale=age_s > STALE_AFTER_INTERVALS * beat.interval_s,
            )
        )
    return rows, ignored


def warnings_of(
    snapshot: Snapshot,
    *,
    growing_dlqs: set[str],
    dlq_of: Callable[[str], str],
) -> list[Warning]:
    """The warnings a snapshot calls for."""
    found: list[Warning] = []
    for row in snapshot.queues:
        figures = row.figures
        if figures is not None and figures.ready > 0 and figures.consumers == 0:
            found.append(
                Warning(
                    "queue_without_consumer",
                    row.name,
                    f"queue {row.name} holds {figures.ready} messages and has no consumer: "
                    "start a worker for it (leveret worker … --queues "
                    f"{row.actor}) or check the deploy",
                )
            )
        if figures is not None and figures.dead_letters_at_most_once:
            found.append(
                Warning(
                    "dead_letters_at_most_once",
                    row.name,
                    f"queue {row.name} passes dead letters to its .dlq at most once (declared "
                    "by Leveret 0.1): a message past its delivery limit can be lost while "
                    f"the .dlq has no leader. Fix: {at_least_once_policy_command(row.name)}",
                )
            )
        dlq = dlq_of(row.actor)
        rate_grows = row.dead_letters_per_s is not None and row.dead_letters_per_s > 0
        if dlq in growing_dlqs or rate_grows:
            found.append(
                Warning(
                    "dead_letters_growing",
                    dlq,
                    f"dead letters of {row.actor} are growing ({row.dead_letters} now): "
                    f"leveret dlq list {row.actor}",
                )
            )
    for worker in snapshot.workers:
        who = f"worker {worker.host} pid {worker.pid}" + (
            f" ({worker.address})" if worker.address else ""
        )
        if worker.stale:
            found.append(
                Warning(
                    "worker_stale",
                    worker.id,
                    f"{who}: no heartbeat for {worker.age_s:.0f} s (killed, hung, or cut off "
                    "from the broker)",
                )
            )
        elif not (worker.connected and worker.consuming):
            state = "not connected" if not worker.connected else "connected but not consuming"
            found.append(Warning("worker_not_consuming", worker.id, f"{who}: {state}"))
    left_out = snapshot.queues_left_out
    if any(left_out.values()):
        exchange = naming.heartbeats_exchange(snapshot.namespace)
        why = [
            f"{count} {reason}"
            for reason, count in (
                ("not actor queues of this namespace", left_out.get("not_actor_queues", 0)),
                (
                    f"past the limits ({MAX_QUEUES_PER_HEARTBEAT} a heartbeat, "
                    f"{MAX_PROBED_QUEUES} asked in one look)",
                    left_out.get("past_limits", 0),
                ),
                ("not on the broker", left_out.get("not_on_broker", 0)),
            )
            if count
        ]
        found.append(
            Warning(
                "queues_left_out",
                exchange,
                f"{sum(left_out.values())} queue names from heartbeats not shown: "
                f"{', '.join(why)}. Anyone who may publish to {exchange} can list names "
                "there; pass the actor MODULES to always show their queues",
            )
        )
    return found


def _grown(
    previous: Snapshot, figures: dict[str, QueueFigures], dlq_of: Callable[[str], str]
) -> set[str]:
    """`.dlq`s with more messages now than in `previous`."""
    grown = set()
    for row in previous.queues:
        dlq = dlq_of(row.actor)
        now = figures.get(dlq)
        if now is not None and row.dead_letters is not None and now.ready > row.dead_letters:
            grown.add(dlq)
    return grown


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
