"""Handling one delivery, whatever the broker: decode, run the handler, decide its fate.

The RabbitMQ worker and the in-memory broker both call `Executor.run`; only how they ack
and dead-letter differs.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from leveret.actors.actor import Actor, Handler
from leveret.actors.context import AsyncContext, Context
from leveret.actors.control import Reject
from leveret.actors.dispatch import MAX_ASK_TIMEOUT_S
from leveret.actors.handling import Handled, done_handling, handling
from leveret.schemas import wire
from leveret.schemas.codec import decode
from leveret.schemas.envelope import Envelope, deadline_of, new_message_id
from leveret.schemas.errors import (
    AskTimeout,
    DecodeError,
    InvalidMessage,
    InvalidRetry,
    MalformedBody,
    TimeLimitExceeded,
    TooLarge,
    UnknownTopic,
)
from leveret.services.delivery import Delivery, Outcome
from leveret.services.middleware import MiddlewareChain
from leveret.services.observability.logs import (
    bind_message_fields,
    get_logger,
    leveret_owns_structlog,
    unbind_message_fields,
)
from leveret.services.observability.redaction import redact
from leveret.services.runtime import answers, error_text
from leveret.services.runtime.eventloop import run_coroutine
from leveret.services.runtime.timelimits import LIMITS
from leveret.services.topology import delays, naming
from leveret.services.topology.delays import MAX_DELAY_S

log = get_logger("leveret.worker")

TRACEBACK_LIMIT = 8000
ERROR_MESSAGE_LIMIT = 2000
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
"""Bodies above this (16 MiB, RabbitMQ 4's own default maximum) are dead-lettered unread."""

_DECODE_REASONS: dict[type[DecodeError], str] = {
    MalformedBody: "malformed_body",
    InvalidMessage: "invalid_message",
    UnknownTopic: "unknown_topic",
    TooLarge: "too_large",
}
HOSTNAME = socket.gethostname()
NESTED_TIMEOUT_MARGIN_S = 0.25
"""An ask's handler failing with `AskTimeout` this close to the ask's own deadline failed
because of it (a nested ask given the rest of that deadline): acked as expired."""


class Executor:
    """Runs deliveries of one actor through its handlers.

    Args:
        actor: The actor class; one instance handles every delivery, from many threads.
        instance: That instance (created by the worker).
        max_body_bytes: Bodies larger than this are dead-lettered unread (reason
            ``too_large``).
        namespace: The actor's namespace: a delivery that comes out of its delay levels
            is known by where its routing key sends it (see `origin`).
        middleware: Its ``before_handle`` and ``after_handle`` run around each delivery
            (tracing among them).
        clock: Seconds since the epoch, against which an ask's deadline is read (the
            in-memory broker's virtual clock there).
    """

    def __init__(
        self,
        actor: type[Actor],
        instance: Actor | None = None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        namespace: str | None = None,
        middleware: MiddlewareChain | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.actor = actor
        self.clock = clock
        self.namespace = namespace
        self._delay_exchanges = frozenset(
            name
            for name in (naming.namespace_exchanges(namespace) if namespace else ())
            if name.startswith(f"{namespace}.delay.")
        )
        self.instance = instance if instance is not None else actor()
        self.name = actor.queue
        self.max_body_bytes = max_body_bytes
        # One logger for every Context of this actor: `structlog.get_logger` builds a new
        # proxy per call, which cost about 1 µs per message when Context made its own.
        self._handler_log = get_logger("leveret.handler")
        self.middleware = middleware if middleware is not None else MiddlewareChain()
        # A project's own structlog chain reads the message's fields from structlog's
        # context variables (merge_contextvars): bound there too, at 2 µs a message.
        self._structlog = not leveret_owns_structlog()

    def is_async(self, delivery: Delivery) -> bool:
        """Whether `delivery` goes to an ``async def`` handler (`run_async`, on the loop)."""
        handler = self.actor.handlers.get(delivery.topic or "")
        return handler is not None and handler.is_async

    def run(self, delivery: Delivery) -> Outcome:
        """Handle one delivery and say what should happen to it.

        Whatever the delivery holds and whatever the handler does, this returns an outcome:
        a fault of Leveret's own while handling it dead-letters the delivery with reason
        ``internal_error`` (and its traceback) instead of raising. The middleware's
        ``before_handle`` and ``after_handle`` run around it (tracing's span among them).
        An async handler's coroutine is run here to its end, on an event loop of this
        call's own (`MemoryBroker.join`); the worker runs those with `run_async`.
        """
        begun = self._begin(delivery)
        try:
            step = self._step(delivery, begun.envelope)
            outcome = step if isinstance(step, Outcome) else run_coroutine(step)
        except Exception as exc:  # noqa: BLE001  # a bug of ours: logged, dead-lettered
            outcome = self._internal_error(delivery, begun, exc)
        except BaseException:
            self._cut_off(begun)
            raise
        return self._end(begun, outcome)

    async def run_async(self, delivery: Delivery) -> Outcome:
        """`run`, for a delivery whose handler is ``async def``, on the running loop.

        The same guarantees as `run`: never raises (but `asyncio.CancelledError` when the
        task running it is cancelled from outside), one outcome per delivery.
        """
        begun = self._begin(delivery)
        try:
            step = self._step(delivery, begun.envelope)
            outcome = step if isinstance(step, Outcome) else await step
        except Exception as exc:  # noqa: BLE001  # a bug of ours: logged, dead-lettered
            outcome = self._internal_error(delivery, begun, exc)
        except BaseException:  # cancelled from outside (shutdown cut it off): no outcome
            self._cut_off(begun)
            raise
        return self._end(begun, outcome)

    def _begin(self, delivery: Delivery) -> _Handling:
        """The message's fields bound (logs, `current_correlation_id`), then the
        middleware's ``before_handle``, which so runs in the message's context."""
        envelope = delivery.envelope()
        log_context = {
            "actor": self.name,
            "topic": envelope.topic,
            "message_id": envelope.message_id,
            "correlation_id": envelope.correlation_id,
            "attempt": envelope.attempt,
        }
        begun = _Handling(
            envelope,
            log_context,
            time.perf_counter(),
            handling(envelope, self.clock),
            bind_message_fields(log_context),
            self._structlog,
        )
        if self._structlog:
            structlog.contextvars.bind_contextvars(**log_context)
        try:
            self.middleware.before_handle(self.name, envelope)
        except BaseException:  # an interrupt in a hook: nothing may stay bound
            begun.undo()
            raise
        return begun

    def _end(self, begun: _Handling, outcome: Outcome) -> Outcome:
        """Log the outcome, then the middleware's ``after_handle`` (tracing's span closes
        there, so the log line carries its id), then unbind the message's fields."""
        try:
            self._log_outcome(outcome, begun.log_context, begun.started)
            duration_s = time.perf_counter() - begun.started
            self.middleware.after_handle(self.name, begun.envelope, outcome, duration_s)
        finally:
            begun.undo()
        return outcome

    def _cut_off(self, begun: _Handling) -> None:
        """Handling was cut off before a fate was decided (an async handler cancelled by
        the worker's shutdown, an interrupt): the after-hooks still run, with no outcome,
        so that what a before-hook opened (a span, a gauge) is closed."""
        try:
            duration_s = time.perf_counter() - begun.started
            self.middleware.after_handle(self.name, begun.envelope, None, duration_s)
        finally:
            begun.undo()

    def _internal_error(self, delivery: Delivery, begun: _Handling, exc: Exception) -> Outcome:
        log.exception("message_handling_failed", **begun.log_context)
        return self._dead_letter(
            delivery, begun.envelope, "internal_error", exc, with_traceback=True
        )

    def _step(
        self, delivery: Delivery, envelope: Envelope
    ) -> Outcome | Coroutine[Any, Any, Outcome]:
        """The outcome of a delivery that does not decode or whose handler is sync (run
        here); for an async handler, the coroutine that handles it, for the caller to
        await (`run_async`) or run on a loop of its own (`run`). An ask taken past its
        deadline is acked unhandled: its caller gave up."""
        deadline_s = self._deadline(envelope)
        if deadline_s is not None and self.clock() >= deadline_s:
            return Outcome("ack", envelope, expired=True)
        try:
            handler, message = self._decode(delivery, envelope)
        except DecodeError as exc:
            reason = _DECODE_REASONS.get(type(exc), "decode_error")
            return self._dead_letter(delivery, envelope, reason, exc, with_traceback=False)
        if handler.is_async:
            return self._handle_async(delivery, envelope, handler, message, deadline_s)
        return self._handle(delivery, envelope, handler, message, deadline_s)

    def _log_outcome(self, outcome: Outcome, log_context: dict[str, Any], started: float) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if outcome.expired:
            log.info(
                "ask_expired",
                outcome="expired",
                duration_ms=duration_ms,
                hint="taken (or still running) past the deadline its caller waits to: "
                "acked without an answer",
                **log_context,
            )
        elif outcome.fate == "ack":
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

    def _handle(
        self,
        delivery: Delivery,
        envelope: Envelope,
        handler: Handler,
        message: Any,
        deadline_s: float | None,
    ) -> Outcome:
        """Run a sync handler under its time limit, which interrupts it when it passes (an
        ask's: at its deadline, if that comes first)."""
        reply_to = answers.reply_address(delivery, handler)
        ctx = Context(envelope, **self._context_args(handler, reply_to))
        limit_s, by_deadline = self._limit_s(handler, deadline_s)
        try:
            returned = LIMITS.run(
                limit_s,
                f"{self.name}.{handler.name}",
                lambda: handler(self.instance, message, ctx),
            )
        except TimeLimitExceeded as exc:
            if by_deadline:
                return Outcome("ack", envelope, expired=True)
            exc.args = (f"handler {handler.name!r} ran past its time limit of {limit_s} s",)
            return self._failed(delivery, envelope, handler, exc)
        except Reject as exc:
            return self._dead_letter(
                delivery, envelope, "rejected", exc, with_traceback=False, handler=handler
            )
        except (Exception, SystemExit) as exc:  # noqa: BLE001  # a handler never kills the worker
            return self._failed(delivery, envelope, handler, exc)
        return self._answered(envelope, handler, ctx, returned, reply_to)

    async def _handle_async(
        self,
        delivery: Delivery,
        envelope: Envelope,
        handler: Handler,
        message: Any,
        deadline_s: float | None,
    ) -> Outcome:
        """Await an async handler under its time limit, which cancels it when it passes (an
        ask's: at its deadline, if that comes first)."""
        reply_to = answers.reply_address(delivery, handler)
        ctx = AsyncContext(envelope, **self._context_args(handler, reply_to))
        limit_s, by_deadline = self._limit_s(handler, deadline_s)
        timeout = asyncio.timeout(limit_s)
        try:
            async with timeout:
                returned = await handler(self.instance, message, ctx)
        except Reject as exc:
            return self._dead_letter(
                delivery, envelope, "rejected", exc, with_traceback=False, handler=handler
            )
        except (Exception, SystemExit) as exc:  # noqa: BLE001  # a handler never kills the worker
            # Past the limit, whatever it raised (the timeout's TimeoutError, or another
            # error it turned its cancellation into) is the time limit; before it, a
            # TimeoutError is the handler's own (an HTTP client's), a failure like any.
            if timeout.expired() and by_deadline:
                return Outcome("ack", envelope, expired=True)
            failure = _past_limit(handler, limit_s, exc) if timeout.expired() else exc
            return self._failed(delivery, envelope, handler, failure)
        if timeout.expired():  # it swallowed the cancellation and returned: still too late
            if by_deadline:
                return Outcome("ack", envelope, expired=True)
            late = _past_limit(handler, limit_s, None, " (and went on after its cancellation)")
            return self._failed(delivery, envelope, handler, late)
        return self._answered(envelope, handler, ctx, returned, reply_to)

    def _context_args(self, handler: Handler, reply_to: str | None) -> dict[str, Any]:
        """What a handler's context is made with, but the envelope."""
        return {
            "actor": self.name,
            "log": self._handler_log,
            "reply_type": handler.reply_type,
            "asked": reply_to is not None,
        }

    def _deadline(self, envelope: Envelope) -> float | None:
        """The deadline of an ask (None for another message). One further ahead than any
        ask may wait (`MAX_ASK_TIMEOUT_S`) is no deadline: any client may send one."""
        deadline_s = deadline_of(envelope.headers.get(wire.DEADLINE))
        if deadline_s is None or deadline_s - self.clock() > MAX_ASK_TIMEOUT_S + 60:
            return None
        return deadline_s

    def _limit_s(self, handler: Handler, deadline_s: float | None) -> tuple[float | None, bool]:
        """The handler's time limit, capped by an ask's deadline; and whether the deadline
        is what limits it."""
        limit_s = self.actor.time_limit_for(handler)
        if deadline_s is None:
            return limit_s, False
        left_s = max(deadline_s - self.clock(), 0.001)
        if limit_s is None or left_s < limit_s:
            return left_s, True
        return limit_s, False

    def _answered(
        self,
        envelope: Envelope,
        handler: Handler,
        ctx: Context | AsyncContext,
        returned: object,
        reply_to: str | None,
    ) -> Outcome:
        """Ack a handler that returned, with its answer when it was asked (`answers`)."""
        if reply_to is None:
            return Outcome("ack", envelope)
        return Outcome(
            "ack",
            envelope,
            reply=answers.reply(self.name, envelope, handler, ctx, returned, reply_to),
        )

    def _decode(self, delivery: Delivery, envelope: Envelope) -> tuple[Handler, Any]:
        """The handler of the delivery's topic, and its message validated for it.

        Raises:
            DecodeError: Too large, no handler for its topic, not JSON, or not valid.
        """
        body = delivery.body
        if len(body) > self.max_body_bytes:
            raise TooLarge(
                f"body of {len(body)} bytes is over the worker's maximum of "
                f"{self.max_body_bytes} bytes (--max-body-size)",
                body=body,
                topic=envelope.topic,
            )
        handler = self.actor.handlers.get(envelope.topic)
        if handler is None:
            raise UnknownTopic(
                f"actor {self.name!r} has no handler for topic {envelope.topic!r}; "
                f"it handles {self.actor.topics()}",
                body=body,
                topic=envelope.topic,
            )
        try:
            return handler, decode(body, handler.message_type, topic=envelope.topic)
        except DecodeError:
            raise
        except Exception as exc:  # a model validator raised something odd
            raise InvalidMessage(
                f"body does not validate as {handler.message_type.__name__}: "
                f"{type(exc).__name__}: {error_text.text(exc)}",
                body=body,
                topic=envelope.topic,
            ) from exc

    def _failed(
        self, delivery: Delivery, envelope: Envelope, handler: Handler, exc: BaseException
    ) -> Outcome:
        """Retry or dead-letter a delivery whose handler raised `exc`, as its policy says;
        an ask past its deadline is acked as expired instead (its caller gave up: a nested
        ask's `AskTimeout` can beat the time limit's interruption to it)."""
        deadline_s = self._deadline(envelope)
        if deadline_s is not None:
            # A nested ask given the rest of this one's deadline times out a hair before it.
            margin_s = NESTED_TIMEOUT_MARGIN_S if isinstance(exc, AskTimeout) else 0.0
            if self.clock() >= deadline_s - margin_s:
                return Outcome("ack", envelope, expired=True)
        policy = self.actor.retry_policy(handler)
        try:
            delay_s = retry_delay_s(policy.next_delay_s(envelope.attempt, exc))
        except InvalidRetry as invalid:
            invalid.__cause__ = exc
            return self._dead_letter(
                delivery, envelope, "invalid_retry", invalid, with_traceback=True, handler=handler
            )
        except Exception as failed:  # noqa: BLE001  # the policy's backoff raised
            raised = InvalidRetry(
                "the retry policy's backoff raised "
                f"{type(failed).__name__}: {error_text.text(failed)}"
            )
            raised.__cause__ = failed
            return self._dead_letter(
                delivery, envelope, "invalid_retry", raised, with_traceback=True, handler=handler
            )
        if delay_s is not None:
            return self._retry(delivery, envelope, exc, delay_s)
        exhausted = envelope.attempt >= policy.attempts > 1
        reason = "retries_exhausted" if exhausted else "handler_error"
        return self._dead_letter(
            delivery, envelope, reason, exc, with_traceback=True, handler=handler
        )

    def _failure_headers(
        self, delivery: Delivery, envelope: Envelope, exc: BaseException
    ) -> dict[str, Any]:
        """The delivery's own headers with this failure recorded (attempt, error, times)."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        headers = {
            key: value for key, value in delivery.headers.items() if key not in wire.BROKER_HEADERS
        }
        if not isinstance(headers.get(wire.FIRST_FAILED_AT), str):
            headers[wire.FIRST_FAILED_AT] = now
        headers.update(
            {
                wire.ATTEMPT: envelope.attempt,
                wire.ERROR_TYPE: f"{type(exc).__module__}.{type(exc).__qualname__}",
                # Redacted before it is cut: a cut through a URL would hide its password
                # from `redact` and leave a piece of it in headers any reader of the .dlq sees.
                wire.ERROR_MESSAGE: redact(error_text.text(exc))[:ERROR_MESSAGE_LIMIT],
                wire.FAILED_AT: now,
                wire.FAILED_ACTOR: self.name,
                wire.FAILED_HOST: HOSTNAME,
            }
        )
        return headers

    def origin(self, delivery: Delivery) -> tuple[str, str]:
        """Where the message of `delivery` was first published: (exchange, routing key).

        A retry, or a message sent or published with a delay, reaches its queue through the
        delay levels, whose exchange and routing key say nothing of its first publish: a
        retry keeps it in ``x-leveret-original-exchange`` and ``-routing-key`` (a replay
        keeps those too), and a delayed message's routing key names the actor's queue or
        the topic it goes to when its delay is over.
        """
        headers = delivery.headers
        exchange, key = headers.get(wire.ORIGINAL_EXCHANGE), headers.get(wire.ORIGINAL_ROUTING_KEY)
        if isinstance(exchange, str) and isinstance(key, str):
            return exchange, key
        if self.namespace and delivery.exchange in self._delay_exchanges:
            target = delays.destination(delivery.routing_key)
            if target is not None and target[0] == "queue":
                return "", naming.queue_name(self.namespace, target[1])
            if target is not None:
                return naming.events_exchange(self.namespace), target[1]
        return delivery.exchange, delivery.routing_key

    def _retry(
        self, delivery: Delivery, envelope: Envelope, exc: BaseException, delay_s: int
    ) -> Outcome:
        headers = self._failure_headers(delivery, envelope, exc)
        headers[wire.ORIGINAL_EXCHANGE], headers[wire.ORIGINAL_ROUTING_KEY] = self.origin(delivery)
        headers[wire.ATTEMPT] = envelope.attempt + 1
        headers.pop(wire.ERROR_TRACEBACK, None)
        headers.pop(wire.ERROR_REASON, None)
        return Outcome("retry", envelope, headers, exc, delay_s)

    def _dead_letter(
        self,
        delivery: Delivery,
        envelope: Envelope,
        reason: str,
        exc: BaseException,
        *,
        with_traceback: bool,
        handler: Handler | None = None,
    ) -> Outcome:
        """Dead-letter the delivery; if it is an ask its caller hears of it now, not at its
        deadline (unless `handler`, the one that failed, answers nothing)."""
        headers = self._failure_headers(delivery, envelope, exc)
        exchange, routing_key = self.origin(delivery)
        headers.update(
            {
                wire.ERROR_REASON: reason,
                wire.ORIGINAL_EXCHANGE: exchange,
                wire.ORIGINAL_ROUTING_KEY: routing_key,
                # Its own identity, by which a dead-letter pass tells a double of it (left
                # by an interrupted pass) from a twin; whatever the delivery carried is not.
                wire.DEAD_LETTER_ID: new_message_id(),
            }
        )
        headers.pop(wire.DLQ_PUT_BACK_BY, None)
        headers.pop(wire.ERROR_TRACEBACK, None)
        if with_traceback:
            headers[wire.ERROR_TRACEBACK] = redact(error_text.traceback_of(exc))[-TRACEBACK_LIMIT:]
        reply_to = answers.reply_address(delivery, handler)
        reply = None
        if reply_to is not None:
            reply = answers.failure(self.name, reply_to, envelope, headers)
        return Outcome("dead_letter", envelope, headers, exc, reply=reply)


def retry_delay_s(delay: object) -> int | None:
    """Whole seconds to wait before a retry, from what a retry policy returned.

    Args:
        delay: `RetryPolicy.next_delay_s`'s answer: None (no retry) or seconds.

    Returns:
        None for no retry, else 0 … `leveret.services.topology.delays.MAX_DELAY_S`, rounded up.

    Raises:
        InvalidRetry: The delay is not a real number (a string, None from a backoff, a
            bool), or is negative, infinite, NaN or longer than the delay levels hold.
    """
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise InvalidRetry(
            f"retry delay must be a number of seconds, not {type(delay).__name__} {delay!r:.100}"
        )
    if not math.isfinite(delay) or not 0 <= delay <= MAX_DELAY_S:
        raise InvalidRetry(
            f"retry delay of {delay!r} s is outside 0 … {MAX_DELAY_S} s (8.5 years, the "
            "longest delay RabbitMQ's delay levels hold)"
        )
    return math.ceil(delay)


def _past_limit(
    handler: Handler, limit_s: float | None, cause: BaseException | None, more: str = ""
) -> TimeLimitExceeded:
    error = TimeLimitExceeded(
        f"handler {handler.name!r} ran past its time limit of {limit_s} s{more}"
    )
    error.__cause__ = cause
    return error


@dataclass(slots=True)
class _Handling:
    """One delivery being handled: what `Executor._begin` bound, undone at its end."""

    envelope: Envelope
    log_context: dict[str, Any]
    started: float
    envelope_token: contextvars.Token[Handled]
    fields_token: contextvars.Token[dict[str, Any] | None]
    structlog: bool

    def undo(self) -> None:
        done_handling(self.envelope_token)
        unbind_message_fields(self.fields_token)
        if self.structlog:
            structlog.contextvars.unbind_contextvars(*self.log_context)
