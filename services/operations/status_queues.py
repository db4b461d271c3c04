"""Which actor queues `leveret status` shows and asks the broker about, within bounds.

Heartbeats are untrusted: any client may publish one to ``{namespace}._heartbeats`` listing
any queue names, and status asks the broker about each queue it shows (a passive declare
over AMQP, a queue and its ``.dlq``). What heartbeats list is bounded here first:

- only actor queues of the namespace count (`actor_queue`); other names are left out;
- at most `MAX_QUEUES_PER_HEARTBEAT` names of one heartbeat;
- at most `MAX_PROBED_QUEUES` queues asked over AMQP in one look, besides the actors
  status was given (the modules' own queues: always shown and asked first, never crowded
  out); the names of different workers take turns, the worker heard from last first;
- with the management API, whose one listing names every queue of the namespace, a name
  it does not list is not on the broker and is not asked about at all.

What is left out is counted (`LeftOut`) and said in a warning, never dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from leveret.actors.actor import MAX_QUEUE_BYTES

MAX_QUEUES_PER_HEARTBEAT = 500
"""Queue names taken from one heartbeat (a worker consuming more lists them all, but
status shows its other queues only from the management API or the MODULES given)."""
MAX_PROBED_QUEUES = 200
"""Queues (each with its ``.dlq``) asked over AMQP in one look besides the given actors'."""

_QUEUE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def actor_queue(namespace: str, name: str) -> str | None:
    """The actor queue `name` (a full name) is, without its namespace; None if `name` is
    not the name of an actor queue of `namespace` (another namespace's, a ``.dlq``, a delay
    level, one of Leveret's own queues, or no valid queue name at all)."""
    prefix = namespace + "."
    if not name.startswith(prefix):
        return None
    short = name[len(prefix) :]
    if (
        _QUEUE.fullmatch(short) is None
        or len(short.encode()) > MAX_QUEUE_BYTES
        or short.startswith(("_", "delay."))
        or short.endswith(".dlq")
    ):
        return None
    return short


@dataclass(slots=True)
class LeftOut:
    """Queue names from heartbeats that status did not show, by reason.

    Attributes:
        not_actor_queues: Names of another namespace, or that no actor queue can have.
        past_limits: Past `MAX_QUEUES_PER_HEARTBEAT` in a heartbeat, or past
            `MAX_PROBED_QUEUES` in a look.
        not_on_broker: No such queue on the broker.
    """

    not_actor_queues: int = 0
    past_limits: int = 0
    not_on_broker: int = 0

    @property
    def total(self) -> int:
        """How many names were left out in all."""
        return self.not_actor_queues + self.past_limits + self.not_on_broker


@dataclass(slots=True)
class Claims:
    """The actor queues heartbeats list, within bounds.

    Attributes:
        by_worker: Each worker id's queues (full names) as its row shows them: actor queues
            of the namespace, at most `MAX_QUEUES_PER_HEARTBEAT`.
        order: The actor queues (without namespace) in the order they may be asked about:
            the workers take turns, one queue each, the worker heard from last first.
        left_out: What was left out so far.
    """

    by_worker: dict[str, list[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    left_out: LeftOut = field(default_factory=LeftOut)


def claimed_queues(namespace: str, heartbeats: Sequence[tuple[str, Sequence[str]]]) -> Claims:
    """The queues `heartbeats` list, each ``(worker id, queue names)`` in the order they
    arrived (the latest of each worker)."""
    claims = Claims()
    invalid: set[str] = set()
    dropped: set[str] = set()  # names as listed, past a heartbeat's limit
    kept: set[str] = set()  # full names
    turns: list[list[str]] = []
    for worker_id, names in reversed(heartbeats):  # the worker heard from last first
        mine: dict[str, None] = {}  # in the heartbeat's order, each once
        for position, name in enumerate(names):
            if len(mine) >= MAX_QUEUES_PER_HEARTBEAT:  # the rest, unread: past the limit
                dropped.update(names[position:])
                break
            short = actor_queue(namespace, name)
            if short is None:
                invalid.add(name)
            else:
                mine[short] = None
        claims.by_worker[worker_id] = [f"{namespace}.{short}" for short in mine]
        kept.update(claims.by_worker[worker_id])
        turns.append(list(mine))
    claims.left_out.not_actor_queues = len(invalid)
    claims.left_out.past_limits = len(dropped - kept - invalid)
    seen: set[str] = set()
    for turn in range(max((len(queues) for queues in turns), default=0)):
        for queues in turns:
            if turn < len(queues) and queues[turn] not in seen:
                seen.add(queues[turn])
                claims.order.append(queues[turn])
    return claims


@dataclass(slots=True)
class Plan:
    """What one look shows and asks over AMQP.

    Attributes:
        known: Actor queues shown whatever the broker says: the given actors (missing or
            not) and those the management API lists.
        probed: Actor queues to ask over AMQP (queue and ``.dlq``): the given actors, then
            listed and claimed ones within `MAX_PROBED_QUEUES`.
        unverified: Of `probed`, the queues only heartbeats name: shown if they exist.
        left_out: What heartbeats named and the look leaves out.
    """

    known: list[str]
    probed: list[str]
    unverified: set[str]
    left_out: LeftOut


def plan(
    *,
    given: Iterable[str],
    listed: Iterable[str],
    claims: Claims,
    listing_complete: bool,
    probe_listed: bool,
) -> Plan:
    """Decide which actor queues (names without namespace) a look shows and asks about.

    Args:
        given: The actors status was given (always shown and asked, first).
        listed: The actor queues the management API lists (empty without it).
        claims: What heartbeats list (`claimed_queues`).
        listing_complete: The management API listed every queue of the namespace: a
            queue it does not list does not exist.
        probe_listed: Ask the listed queues over AMQP too (within the bound), for figures
            more current than the API's.
    """
    first = list(dict.fromkeys(given))
    listed_set = set(listed)
    listed_queues = sorted(listed_set - set(first))
    known = set(first) | set(listed_queues)
    left_out = LeftOut(
        claims.left_out.not_actor_queues,
        claims.left_out.past_limits,
        claims.left_out.not_on_broker,
    )
    unverified = [queue for queue in claims.order if queue not in known]
    if listing_complete:
        left_out.not_on_broker += len(unverified)
        unverified = []
    budget = MAX_PROBED_QUEUES
    # The given actors: always, unless the API's figures are trusted and it lists them.
    probed = [queue for queue in first if probe_listed or queue not in listed_set]
    if probe_listed:
        probed += listed_queues[:budget]
        budget -= min(budget, len(listed_queues))
    left_out.past_limits += max(0, len(unverified) - budget)
    unverified = unverified[:budget]
    return Plan(
        known=sorted(known),
        probed=probed + unverified,
        unverified=set(unverified),
        left_out=left_out,
    )
