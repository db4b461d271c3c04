"""Internal: one pass over a RabbitMQ dead-letter queue, for browsing and replaying it safely.

RabbitMQ has no way to read a queue without taking messages out of it. Taking a dead
letter and giving it back (``basic.get`` without ack, then closing) counts as a failed
delivery on a quorum queue, and since RabbitMQ 4.0 quorum queues have a delivery limit of
20 by default: about twenty ``leveret dlq list`` would make the broker drop every letter
(the ``.dlq`` has nowhere to dead-letter them to). So a pass never gives a letter back.

Instead, a pass first puts a marker at the back of the queue (an empty message whose
`wire.DLQ_END_MARKER` header names the pass), then takes every letter in front of it, once
each, and in AMQP transactions either publishes a letter to the actor's queue (a replay) or
publishes it at the back of the dead-letter queue, and acks it; it ends when it takes its
marker. Letters dead-lettered meanwhile queue up behind the marker, so a pass always ends,
however fast a failing handler refills the queue, and the letters present at its start keep
their order whatever ``queue.declare`` counts (on a cluster the count comes from the local
replica and may lag). The count only sizes each consumer's prefetch so that the broker never
hands over a letter behind the marker (a consumer per batch: RabbitMQ applies a prefetch to
consumers started after it).

A letter put back is unchanged but for two headers of Leveret's: `wire.DEAD_LETTER_ID`, its
identity (given by the worker that dead-lettered it, else by its first pass, then kept), and
`wire.DLQ_PUT_BACK_BY`, the pass that put it back. The broker's delivery counters start again.

What RabbitMQ guarantees, and what it does not: a transaction's publishes and acks take
effect together or not at all only while the connection lives. RabbitMQ's broker semantics
page says so ("atomicity in single queue: no"), and on a quorum queue the gap is real: the
broker's client of the queue holds acks back once 32 commands are in flight and sends them
as earlier ones are applied, so a connection that dies while a commit of 200 letters is being
applied leaves the 200 letters published again but not removed (rabbitmq-server #10327 shows
the same loss of acks at a channel's close). Hence:

- a transaction carries at most `BATCH` (16) letters, under that limit;
- a letter whose copy and original both survive an interrupted pass is a double the next
  pass can prove: the original was redelivered (the dead pass held it), the copy carries the
  dead pass's id (that pass's marker was left in the queue), and both carry the same identity
  and the same content. The next pass keeps the first it meets and removes the other
  (``dead_letter_double_removed``). A letter on its first pass that had no identity yet (one
  the broker dead-lettered itself, or another client published) cannot be told from a twin,
  so its double, were RabbitMQ to leave one, would stay.

Two passes on one queue at once would see each other's letters: `dlq_lock` (an exclusive
queue, which RabbitMQ gives to one connection at a time) makes a second one fail fast.
"""

from __future__ import annotations

import collections
import hashlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic

from leveret.schemas import wire
from leveret.schemas.errors import TopologyError
from leveret.services.delivery import Delivery
from leveret.services.observability.logs import get_logger
from leveret.services.operations.deadletters import replayed
from leveret.services.rabbitmq import _properties as wire_properties

log = get_logger("leveret.deadletters")

BATCH = 16
"""Letters per transaction: fewer commands than the 32 a quorum queue's client in the broker
keeps in flight before it holds acks back (see the module's docstring)."""

WINDOW = 200
"""Letters taken per consumer (its prefetch), settled `BATCH` at a time once it is cancelled."""

IDLE_TIMEOUT_S = 5.0
"""A consumer that receives nothing for this long stops: the rest was purged meanwhile."""

# Counters RabbitMQ adds to every delivery of a quorum queue: a letter put back is a new
# message, whose count starts again.
_DELIVERY_COUNTERS = ("x-delivery-count", "x-acquired-count")
# Headers that differ between a letter and its copy, left out of the comparison of the two.
_NOT_CONTENT = frozenset({wire.DLQ_PUT_BACK_BY, *_DELIVERY_COUNTERS})
_PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)

Visit = Callable[[Delivery], bool]
"""Called with each letter; True moves it to the actor's queue (a replay), False keeps it."""

Received = tuple[Basic.Deliver, pika.BasicProperties, bytes]


def dlq_lock(connection: BlockingConnection, lock: str, dlq: str) -> BlockingChannel:
    """Hold `lock`, the lock of the dead-letter queue `dlq`, for the life of `connection`.

    Args:
        connection: The connection that holds it (closing it releases the lock).
        lock: The lock's name (`leveret.services.topology.naming.dlq_lock`).
        dlq: The dead-letter queue's name, for the error.

    Returns:
        The channel that holds it.

    Raises:
        TopologyError: Another connection holds it: a dead-letter operation on the same
            queue is running.
    """
    channel = connection.channel()
    try:
        channel.queue_declare(
            lock, exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
        )
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 405:  # RESOURCE_LOCKED
            raise TopologyError(
                f"another dead-letter operation on {dlq} is running (list, show, replay, "
                "purge); try again once it has finished"
            ) from exc
        raise
    return channel


def run_pass(
    channel: BlockingChannel,
    dlq: str,
    visit: Visit,
    *,
    queue: str | None = None,
    on_moved: Callable[[Delivery], None] | None = None,
) -> int:
    """Visit each letter present in `dlq` now, once; move those `visit` picks to `queue`.

    Args:
        channel: A blocking channel (put in transaction mode here).
        dlq: The dead-letter queue's full name.
        visit: Says for each letter whether to move it (see `Visit`).
        queue: The actor's queue (full name), where moved letters go as replays: same id,
            topic, correlation id and body, attempt reset. Required if `visit` may say True.
        on_moved: Called with each moved letter once it is committed.

    Returns:
        How many letters were moved.
    """
    # Counted before the marker is published: at least this many letters are in front of
    # it (nothing else takes letters out while the lock is held), so no batch sized by the
    # count reaches behind it. A count that lags is made up one letter at a time.
    left = int(channel.queue_declare(dlq, passive=True).method.message_count)
    walk = _Pass(channel, dlq, visit, queue, on_moved)
    channel.tx_select()
    channel.basic_publish("", dlq, b"", _marker(walk.id))
    channel.tx_commit()
    while not walk.ended:
        take = min(WINDOW, left) if left > 0 else 1
        window = _receive(channel, dlq, take)
        for received in window:
            walk.handle(received)
            if walk.settled >= BATCH:
                walk.commit()
        walk.commit()
        if len(window) < take:
            break  # fewer letters than counted, the marker with them: purged meanwhile
        left = max(left - take, 0)
    return walk.moved


class _Pass:
    """The state of one pass: its id, the letters it moved, what it knows of dead passes."""

    def __init__(
        self,
        channel: BlockingChannel,
        dlq: str,
        visit: Visit,
        queue: str | None,
        on_moved: Callable[[Delivery], None] | None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.channel = channel
        self.dlq = dlq
        self.visit = visit
        self.queue = queue
        self.on_moved = on_moved
        self.ended = False
        self.moved = 0
        self.settled = 0
        """Messages settled since the last commit."""
        self._uncommitted: list[Delivery] = []
        # Passes whose marker this pass met: they were interrupted.
        self._dead_passes: set[str] = set()
        # Letters that may have a double: taken back from a dead pass (redelivered), or put
        # back by one (its copies; only the last ones can be doubles: a bounded window).
        self._redelivered: set[tuple[str, bytes]] = set()
        self._copies: collections.OrderedDict[tuple[str, bytes], None] = collections.OrderedDict()

    def handle(self, received: Received) -> None:
        """Settle one message taken from the queue: a marker, a double, or a letter."""
        self.settled += 1
        method, props, body = received
        tag = method.delivery_tag
        if tag is None:  # pika types it optional; the broker always sends one
            raise TopologyError(f"a delivery from {self.dlq} without a delivery tag")
        headers = props.headers or {}
        if self.ended:
            # Behind this pass's marker: reached only if the queue was purged by hand and
            # refilled meanwhile. Given back (once; the next pass puts it back fresh).
            self.channel.basic_reject(tag, requeue=True)
            return
        marker = headers.get(wire.DLQ_END_MARKER)
        if not body and isinstance(marker, str):
            self.channel.basic_ack(tag)
            if marker == self.id:
                self.ended = True
            else:
                self._dead_passes.add(marker)
            return
        if self._is_double(method, headers, props, body):
            self.channel.basic_ack(tag)
            log.warning(
                "dead_letter_double_removed",
                queue=self.dlq,
                message_id=wire_properties.text(props.message_id) or "",
                dead_letter_id=str(headers.get(wire.DEAD_LETTER_ID)),
            )
            return
        letter = wire_properties.delivery(method, props, body)
        if self.visit(letter):
            if self.queue is None:
                raise ValueError("a pass that moves letters needs the actor's queue")
            again = replayed(letter)
            self.channel.basic_publish(
                "",
                self.queue,
                body,
                wire_properties.republish_properties(letter, dict(again.headers)),
            )
            self.channel.basic_ack(tag)
            self._uncommitted.append(letter)
            # A replayed letter is committed at once: an interrupted replay loses at most
            # that one's progress.
            self.commit()
        else:
            self.channel.basic_publish("", self.dlq, body, self._put_back(props))
            self.channel.basic_ack(tag)

    def commit(self) -> None:
        """Commit what was settled since the last commit; report the moved letters."""
        self.channel.tx_commit()
        self.settled = 0
        self.moved += len(self._uncommitted)
        if self.on_moved is not None:
            for letter in self._uncommitted:
                self.on_moved(letter)
        self._uncommitted = []

    def _is_double(
        self, method: Basic.Deliver, headers: Mapping[str, Any], props: Any, body: bytes
    ) -> bool:
        """Whether this letter is provably a double of one this pass met before (see the
        module's docstring); remembers it otherwise, when it may have a double itself."""
        identity = headers.get(wire.DEAD_LETTER_ID)
        if not isinstance(identity, str):
            return False
        from_dead_pass = headers.get(wire.DLQ_PUT_BACK_BY) in self._dead_passes
        if not (method.redelivered or from_dead_pass):
            return False
        key = (identity, _content(props, body))
        if key in self._redelivered or key in self._copies:
            return True
        if method.redelivered:
            self._redelivered.add(key)
        else:
            self._copies[key] = None
            if len(self._copies) > 2 * BATCH:
                self._copies.popitem(last=False)
        return False

    def _put_back(self, props: pika.BasicProperties) -> pika.BasicProperties:
        """The letter's own properties, with its identity and this pass's id, without the
        broker's per-delivery counters."""
        headers = {k: v for k, v in (props.headers or {}).items() if k not in _DELIVERY_COUNTERS}
        if wire.DEAD_LETTER_ID not in headers:
            headers[wire.DEAD_LETTER_ID] = uuid.uuid4().hex
        headers[wire.DLQ_PUT_BACK_BY] = self.id
        props.headers = headers
        return props


def _receive(channel: BlockingChannel, dlq: str, take: int) -> list[Received]:
    """Take `take` messages from the head of `dlq` with a consumer of that prefetch, then
    cancel it, so that settling them never lets the broker hand over more (RabbitMQ gives a
    prefetch to the consumers started after it, never to one that runs)."""
    channel.basic_qos(prefetch_count=take)
    batch: list[Received] = []
    for method, props, body in channel.consume(dlq, inactivity_timeout=IDLE_TIMEOUT_S):
        if method is None or props is None or body is None:
            break  # nothing for a while: fewer letters than counted
        batch.append((method, props, body))
        if len(batch) == take:
            break
    channel.cancel()
    return batch


def _marker(pass_id: str) -> pika.BasicProperties:
    """The properties of the marker a pass puts behind the letters it visits."""
    return pika.BasicProperties(
        delivery_mode=wire_properties.PERSISTENT, headers={wire.DLQ_END_MARKER: pass_id}
    )


def _content(props: pika.BasicProperties, body: bytes) -> bytes:
    """A digest of what a letter and its copy have in common: every property, every header
    but the pass's and the broker's counters, and the body."""
    headers = sorted(
        (key, value) for key, value in (props.headers or {}).items() if key not in _NOT_CONTENT
    )
    described = repr(([getattr(props, name) for name in _PROPERTIES], headers))
    digest = hashlib.blake2b(described.encode(errors="replace"), digest_size=16)
    digest.update(body)
    return digest.digest()
