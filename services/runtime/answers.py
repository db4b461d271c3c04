"""A worker's answers to asks: what a handler that was asked returned, as a `Reply`.

The executor (`leveret.services.runtime.execution`) decides a delivery's fate; when the
delivery is an ask (its ``reply_to`` is a direct reply-to address) the outcome also carries
the `Reply` the consumer publishes as it settles the request: the handler's answer, or the
error that dead-lettered the request (its type and message, never its traceback), so that
the caller hears at once rather than at its deadline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from leveret.actors.actor import Handler
from leveret.actors.context import AsyncContext, Context
from leveret.schemas import wire
from leveret.schemas.codec import encode
from leveret.schemas.envelope import Envelope, new_message_id
from leveret.schemas.message import Message
from leveret.services.delivery import Delivery, Reply
from leveret.services.observability.logs import get_logger
from leveret.services.observability.redaction import redact
from leveret.services.runtime import error_text

log = get_logger("leveret.worker")


class NoAnswer(Exception):
    """A handler that was asked returned without a valid answer.

    Attributes:
        reason: ``no_reply`` or ``invalid_reply``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def reply_address(delivery: Delivery, handler: Handler | None = None) -> str | None:
    """Where to answer `delivery`, if it is an ask: only a direct reply-to address
    (`wire.REPLY_TO_PREFIX`), never a queue a client names; and nowhere when `handler`
    answers nothing (an actor without a reply type stays silent, also to ``ask_all``)."""
    if handler is not None and handler.reply_type is None:
        return None
    reply_to = delivery.reply_to
    if reply_to and reply_to.startswith(wire.REPLY_TO_PREFIX):
        return reply_to
    return None


def reply(
    actor: str,
    envelope: Envelope,
    handler: Handler,
    ctx: Context | AsyncContext,
    returned: object,
    reply_to: str,
) -> Reply:
    """The reply to an ask whose handler returned `returned`.

    A handler asked without a valid answer (none, two, or not its reply type) is a bug of
    the handler's, but its work is done: the request is acked all the same, and its caller
    gets a `RemoteError` (reason ``no_reply`` or ``invalid_reply``) at once; logged
    ``reply_invalid``.
    """
    try:
        answer = answer_of(handler, ctx, returned)
        body = encode(answer)
    except Exception as exc:  # noqa: BLE001  # NoAnswer, or the answer's serializer failed
        problem = (
            exc
            if isinstance(exc, NoAnswer)
            else NoAnswer("invalid_reply", f"encoding failed: {error_text.text(exc)}")
        )
        log.error(
            "reply_invalid",
            actor=actor,
            message_id=envelope.message_id,
            reason=problem.reason,
            error=str(problem),
        )
        headers = {
            wire.ERROR_REASON: problem.reason,
            wire.ERROR_TYPE: "",
            # Redacted before it is cut (as a dead letter's): a user's error may hold a URL.
            wire.ERROR_MESSAGE: redact(str(problem))[:2000],
        }
        return failure(actor, reply_to, envelope, headers)
    return Reply(
        to=reply_to,
        correlation_id=envelope.message_id,
        status="ok",
        actor=actor,
        message_id=new_message_id(),
        topic=answer.topic(),
        body=body,
    )


def failure(actor: str, reply_to: str, envelope: Envelope, headers: Mapping[str, Any]) -> Reply:
    """A reply telling the caller its request failed for good: the reason, error type and
    message of `headers` (a dead letter's), never the traceback."""
    return Reply(
        to=reply_to,
        correlation_id=envelope.message_id,
        status="error",
        actor=actor,
        message_id=new_message_id(),
        headers={
            key: headers.get(key, "")
            for key in (wire.ERROR_REASON, wire.ERROR_TYPE, wire.ERROR_MESSAGE)
        },
    )


def answer_of(handler: Handler, ctx: Context | AsyncContext, returned: object) -> Message:
    """The answer of a handler that was asked: what it returned, else what it gave
    ``ctx.reply``.

    Raises:
        NoAnswer: None, both, or not the handler's reply type.
    """
    reply_type = handler.reply_type
    if reply_type is None:
        raise NoAnswer(
            "no_reply",
            f"handler {handler.name!r} answers no ask (its return annotation names no "
            "Message class)",
        )
    if returned is not None and ctx.answer is not None:
        raise NoAnswer(
            "invalid_reply",
            f"handler {handler.name!r} answered twice: by ctx.reply and by returning",
        )
    answer = returned if returned is not None else ctx.answer
    if answer is None:
        raise NoAnswer(
            "no_reply", f"handler {handler.name!r} returned None and did not call ctx.reply"
        )
    if not isinstance(answer, reply_type):
        raise NoAnswer(
            "invalid_reply",
            f"handler {handler.name!r} answered with {type(answer).__name__}, not its reply "
            f"type {reply_type.__name__}",
        )
    return answer
