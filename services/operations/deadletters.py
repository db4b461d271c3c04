"""Reading and operating dead-letter queues: what the CLI (`leveret dlq`) and dashboards use.

Dead letters are kept until replayed or purged. Replaying publishes the message back to its
actor's queue with the attempt count reset; on RabbitMQ the publish and the removal of the
dead letter happen in one AMQP transaction, so a replay killed half way and run again puts
each message back exactly once (as far as RabbitMQ applies a transaction whole: see
`leveret.services.rabbitmq._dlq_pass`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leveret.schemas import wire
from leveret.schemas.errors import InvalidArgument, NotFound
from leveret.services.delivery import Delivery


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter, summarised for a table.

    Attributes:
        message_id: The message's id (as when it was first published).
        topic: Its topic.
        attempts: Attempts made before it was dead-lettered.
        reason: ``handler_error``, ``rejected``, ``malformed_body``, ``invalid_message``,
            ``unknown_topic``, ``delivery_limit`` (the broker gave up on it), …
        error: ``Type: message`` of the last failure.
        failed_at: When it was dead-lettered (ISO 8601), if known.
        delivery: The whole delivery: headers and body.
    """

    message_id: str
    topic: str
    attempts: int
    reason: str
    error: str
    failed_at: str
    delivery: Delivery

    @classmethod
    def of(cls, delivery: Delivery) -> DeadLetter:
        """Summarise a delivery read from a dead-letter queue."""
        headers = delivery.headers
        reason = str(headers.get(wire.ERROR_REASON, ""))
        if not reason and "x-death" in headers:
            reason = "delivery_limit"
        error_type = str(headers.get(wire.ERROR_TYPE, "")).rsplit(".", 1)[-1]
        message = str(headers.get(wire.ERROR_MESSAGE, ""))
        attempt = headers.get(wire.ATTEMPT, 1)
        return cls(
            message_id=delivery.message_id or "",
            topic=delivery.topic or "",
            attempts=attempt if isinstance(attempt, int) else 1,
            reason=reason,
            error=f"{error_type}: {message}" if error_type else message,
            failed_at=str(headers.get(wire.FAILED_AT, "")),
            delivery=delivery,
        )


_KEPT_ON_REPLAY = frozenset({wire.ORIGINAL_EXCHANGE, wire.ORIGINAL_ROUTING_KEY})
"""Where the message was first published: still true of the replayed message."""


def replay_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers of a replayed dead letter: failure details dropped, attempt reset to 1,
    where it was first published kept."""
    kept = {
        key: value
        for key, value in headers.items()
        if (not key.startswith("x-leveret-") or key in _KEPT_ON_REPLAY)
        and key not in wire.BROKER_HEADERS
    }
    kept[wire.ATTEMPT] = 1
    kept[wire.REPLAYED_AT] = datetime.now(UTC).isoformat(timespec="milliseconds")
    return kept


def replayed(delivery: Delivery) -> Delivery:
    """The delivery to put back on the actor's queue for a dead letter."""
    return Delivery(
        body=delivery.body,
        topic=delivery.topic,
        message_id=delivery.message_id,
        correlation_id=delivery.correlation_id,
        timestamp=delivery.timestamp,
        headers=replay_headers(delivery.headers),
    )


class ByIdPrefix:
    """Finds, in one pass, the dead letter an operator means by an id or the start of one
    (`leveret dlq show`): the letter with exactly that id, else the only id that starts
    with it.

    Pass it as the `where` of `Broker.dead_letters` (it keeps what it needs and picks
    nothing), then call `one`.

    Args:
        prefix: The id, or its first characters.
    """

    CANDIDATES = 10
    """How many of the ids an ambiguous prefix matches the error names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._exact: Delivery | None = None
        self._matches: dict[str, Delivery] = {}  # the first letter of each id, a few

    def __call__(self, letter: Delivery) -> bool:
        message_id = letter.message_id
        if message_id == self.prefix:
            if self._exact is None:
                self._exact = letter
        elif (
            message_id.startswith(self.prefix)
            and message_id not in self._matches
            and len(self._matches) <= self.CANDIDATES
        ):
            self._matches[message_id] = letter
        return False

    def one(self, queue: str) -> Delivery:
        """The letter meant.

        Args:
            queue: The actor's queue, for the errors.

        Raises:
            NotFound: No letter's id is or starts with the prefix.
            InvalidArgument: Several ids start with it (the error names them).
        """
        if self._exact is not None:
            return self._exact
        if len(self._matches) == 1:
            return next(iter(self._matches.values()))
        if not self._matches:
            raise NotFound(f"no dead letter {printable(self.prefix)} in {queue}")
        named = sorted(self._matches)[: self.CANDIDATES]
        more = ", …" if len(self._matches) > self.CANDIDATES else ""
        raise InvalidArgument(
            f"several dead letters of {queue} have an id starting with "
            f"{printable(self.prefix)}: {', '.join(printable(x) for x in named)}{more}; "
            "give more of the id"
        )


# Control characters, invisible format characters (bidirectional overrides), surrogates,
# private-use and unassigned code points, and line or paragraph separators: anything a
# publisher could use to rewrite what an operator's terminal shows.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` safe for a terminal: every control or invisible character escaped.

    Dead letters come from any publisher: a header or body holding ``ESC [ ... m`` or a
    bidirectional override would otherwise act on the operator's terminal. Such characters
    are shown as ``\\x1b``, ``\\u202e``…

    Args:
        text: Any text from the wire.
        keep_newlines: Leave ``\\n`` and ``\\t`` as they are (a traceback's lines).
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if keep_newlines and char in "\n\t":
            out.append(char)
        elif unicodedata.category(char) in _UNPRINTABLE:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)
