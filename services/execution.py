"""Handling one delivery, whatever the broker: decode, run the handler, decide its fate.

The RabbitMQ worker and the in-memory broker both call `Executor.run`; only how they ack
and dead-letter differs.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from actors.actor import Actor, Handler
from actors.context import Context, done_handling, handling
from actors.control import Reject
from schemas import envelope as wire
from schemas.codec import decode
from schemas.envelope import Envelope, new_message_id
from schemas.errors import (
    DecodeError,
    InvalidMessage,
    MalformedBody,
    TimeLimitExceeded,
    UnknownTopic,
)
from services.logs import get_logger
from services.timelimits import LIMITS

log = get_logger("leveret.worker")

TRACEBACK_LIMIT = 8000
_DECODE_REASONS: dict[type[DecodeError], str] = {
    MalformedBody: "malformed_body",
    InvalidMessage: "invalid_message",
    UnknownTopic: "unknown_topic",
}
HOSTNAME = socket.gethostname()


@dataclass(slots=True)
class Delivery:
    """A delivery as any broker hands it over.

    Attributes:
        body: Raw body.
        topic: The AMQP ``type`` property, else the routing key of a ``publish``.
        message_id: The ``message_id`` property (None from a client that sets none).
        correlation_id: The ``correlation_id`` property.
        timestamp: The ``timestamp`` property, seconds since the epoch.
        headers: AMQP headers.
        redelivered: The broker's redelivered flag.
        exchange: The exchange it was published to.
        routing_key: Its routing key.
    """

    body: bytes
    topic: str | None
    message_id: str | None
    correlation_id: str | None
    timestamp: int | None
    headers: Mapping[str, Any]
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""

    def envelope(self) -> Envelope:
        """The envelope a handler sees."""
        attempt = self.headers.get(wire.ATTEMPT, 1)
        return Envelope(
            message_id=self.message_id or new_message_id(),
            topic=self.topic or "",
            correlation_id=self.correlation_id,
            timestamp=(
                datetime.fromtimestamp(self.timestamp, UTC)
                if self.timestamp is not None
                else datetime.now(UTC)
            ),
            attempt=attempt if isinstance(attempt, int) else 1,
            headers=self.headers,
            redelivered=self.redelivered,
        )


Fate = Literal["ack", "retry", "dead_letter"]


@dataclass(slots=True)
class Outcome:
    """What the broker must do with a delivery once its handler is done.

    Attributes:
        fate: ``ack`` (handled), ``retry`` (published again after `delay_s`, then ack) or
            ``dead_letter`` (to the actor's `.dlq`, then ack).
        envelope: The delivery's envelope.
        headers: For retries and dead letters: the headers to publish with (attempt count,
            ``x-leveret-error-*``).
        error: The exception behind a retry or dead letter, if any.
        delay_s: For retries: whole seconds to wait (0: at once).
    """

    fate: Fate
    envelope: Envelope
    headers: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    delay_s: int = 0


@dataclass(slots=True)
class Stats:
    """Counters of one worker, updated from handler threads."""

    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, outcome: Outcome) -> None:
        """Count one finished delivery."""
        with self.lock:
            if outcome.fate == "ack":
                self.handled += 1
            elif outcome.fate == "retry":
                self.retried += 1
            else:
                self.dead_lettered += 1


class MessageHooks(Protocol):
    """Code run around each message, in the thread that runs its handler.

    Passed to `Broker.worker(..., hooks=[...])`. With several hooks, `before_message` runs
    in the order given and `after_message` in reverse, so a hook's after-code runs inside
    the hooks given before it. The Django worker uses one to close stale database
    connections, as Django does around each request. A hook that raises is logged; the
    message is handled all the same.
    """

    def before_message(self, envelope: Envelope) -> None:
        """Called before the message is decoded and its handler runs."""

    def after_message(self, envelope: Envelope, outcome: Outcome) -> None:
        """Called once the message's fate is known, before the broker acts on it."""


class Executor:
    """Runs deliveries of one actor through its handlers.

    Args:
        actor: The actor class; one instance handles every delivery, from many threads.
        instance: That instance (created by the worker).
        hooks: Run around each delivery (see `MessageHooks`).
    """

    def __init__(
        self,
        actor: type[Actor],
        instance: Actor | None = None,
        *,
        hooks: Sequence[MessageHooks] = (),
    ) -> None:
        self.actor = actor
        self.instance = instance if instance is not None else actor()
        self.name = actor.queue
        self.hooks = tuple(hooks)
        # One logger for every Context of this actor: `structlog.get_logger` builds a new
        # proxy per call, which cost about 1 µs per message when Context made its own.
        self._handler_log = structlog.get_logger("leveret.handler")

    def run(self, delivery: Delivery) -> Outcome:
        """Handle one delivery and say what should happen to it. Never raises."""
        started = time.perf_counter()
        envelope = delivery.envelope()
        log_context = {
            "actor": self.name,
            "topic": envelope.topic,
            "message_id": envelope.message_id,
            "correlation_id": envelope.correlation_id,
            "attempt": envelope.attempt,
        }
        structlog.contextvars.bind_contextvars(**log_context)
        token = handling(envelope)
        try:
            for hook in self.hooks:
                _call_hook(hook.before_message, envelope)
            outcome = self._run(delivery, envelope)
            for hook in reversed(self.hooks):
                _call_hook(hook.after_message, envelope, outcome)
        finally:
            done_handling(token)
            structlog.contextvars.unbind_contextvars(*log_context)
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if outcome.fate == "ack":
            log.info("message_handled", outcome="handled", duration_ms=duration_ms, **log_context)
        elif outcome.fate == "retry":
            log.warning(
                "message_retried",
                outcome="retried",
                duration_ms=duration_ms,
                retry_in_s=outcome.delay_s,
                error=outcome.headers.get(wire.ERROR_MESSAGE),
                error_type=outcome.headers.get(wire.ERROR_TYPE),
                **log_context,
            )
        else:
            log.warning(
                "message_dead_lettered",
                outcome="dead_lettered",
                duration_ms=duration_ms,
                reason=outcome.headers.get(wire.ERROR_REASON),
                error=outcome.headers.get(wire.ERROR_MESSAGE),
                **log_context,
            )
        return outcome

    def _run(self, delivery: Delivery, envelope: Envelope) -> Outcome:
        handler = self.actor.handlers.get(envelope.topic)
        try:
            if handler is None:
                raise UnknownTopic(
                    f"actor {self.name!r} has no handler for topic {envelope.topic!r}; "
                    f"it handles {self.actor.topics()}",
                    body=delivery.body,
                    topic=envelope.topic,
                )
            message = decode(delivery.body, handler.message_type, topic=envelope.topic)
        except DecodeError as exc:
            reason = _DECODE_REASONS.get(type(exc), "decode_error")
            return self._dead_letter(delivery, envelope, reason, exc, with_traceback=False)
        ctx = Context(envelope, actor=self.name, log=self._handler_log)
        limit_s = self.actor.time_limit_for(handler)
        try:
            # The `with` is inside the `try`: an interruption that lands as the handler
            # returns, in the limit's own exit code, is still a failure of this message.
            with LIMITS.limit(limit_s, f"{self.name}.{handler.name}") as watch:
                handler(self.instance, message, ctx)
            if watch is not None and watch.fired:
                raise TimeLimitExceeded()  # the handler swallowed the interruption
        except TimeLimitExceeded as exc:
            exc.args = (f"handler {handler.name!r} ran past its time limit of {limit_s} s",)
            return self._failed(delivery, envelope, handler, exc)
        except Reject as exc:
            return self._dead_letter(delivery, envelope, "rejected", exc, with_traceback=False)
        except (Exception, SystemExit) as exc:  # noqa: BLE001  # a handler never kills the worker
            return self._failed(delivery, envelope, handler, exc)
        return Outcome("ack", envelope)

    def _failed(
        self, delivery: Delivery, envelope: Envelope, handler: Handler, exc: BaseException
    ) -> Outcome:
        """Retry or dead-letter a delivery whose handler raised `exc`, as its policy says."""
        policy = self.actor.retry_policy(handler)
        delay = policy.next_delay_s(envelope.attempt, exc)
        if delay is not None:
            return self._retry(delivery, envelope, exc, math.ceil(delay))
        exhausted = envelope.attempt >= policy.attempts > 1
        reason = "retries_exhausted" if exhausted else "handler_error"
        return self._dead_letter(delivery, envelope, reason, exc, with_traceback=True)

    def _failure_headers(
        self, delivery: Delivery, envelope: Envelope, exc: BaseException
    ) -> dict[str, Any]:
        """The delivery's own headers with this failure recorded (attempt, error, times)."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        headers = {
            key: value for key, value in delivery.headers.items() if key not in wire.BROKER_HEADERS
        }
        headers.setdefault(wire.FIRST_FAILED_AT, now)
        headers.update(
            {
                wire.ATTEMPT: envelope.attempt,
                wire.ERROR_TYPE: f"{type(exc).__module__}.{type(exc).__qualname__}",
                wire.ERROR_MESSAGE: str(exc)[:2000],
                wire.FAILED_AT: now,
                wire.FAILED_ACTOR: self.name,
                wire.FAILED_HOST: HOSTNAME,
            }
        )
        return headers

    def _retry(
        self, delivery: Delivery, envelope: Envelope, exc: BaseException, delay_s: int
    ) -> Outcome:
        headers = self._failure_headers(delivery, envelope, exc)
        headers[wire.ATTEMPT] = envelope.attempt + 1
        headers.pop(wire.ERROR_TRACEBACK, None)
        return Outcome("retry", envelope, headers, exc, delay_s)

    def _dead_letter(
        self,
        delivery: Delivery,
        envelope: Envelope,
        reason: str,
        exc: BaseException,
        *,
        with_traceback: bool,
    ) -> Outcome:
        headers = self._failure_headers(delivery, envelope, exc)
        headers.update(
            {
                wire.ERROR_REASON: reason,
                wire.ORIGINAL_EXCHANGE: delivery.exchange,
                wire.ORIGINAL_ROUTING_KEY: delivery.routing_key,
            }
        )
        if with_traceback:
            text = "".join(traceback.format_exception(exc))
            headers[wire.ERROR_TRACEBACK] = text[-TRACEBACK_LIMIT:]
        return Outcome("dead_letter", envelope, headers, exc)


def _call_hook(function: Callable[..., None], *args: Any) -> None:
    try:
        function(*args)
    except Exception as exc:  # noqa: BLE001  # a hook never kills the worker or the message
        log.error(
            "message_hook_failed",
            hook=getattr(function, "__qualname__", repr(function)),
            error=repr(exc),
        )
