"""JSON (de)serialisation of messages. No pickle, ever."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import ValidationError

from leveret.schemas.errors import InvalidMessage, MalformedBody
from leveret.schemas.message import Message

M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    """The message's JSON body, as UTF-8 bytes."""
    return message.__pydantic_serializer__.to_json(message)


def decode(body: bytes, message_class: type[M], *, topic: str | None = None) -> M:
    """Validate a JSON body into an instance of `message_class`.

    Args:
        body: The raw body as it arrived.
        message_class: The class to validate against.
        topic: The topic the delivery claimed, kept on the error.

    Returns:
        The validated, frozen message.

    Raises:
        MalformedBody: The body is not UTF-8 JSON.
        InvalidMessage: The JSON does not validate; the reason lists each field's error.
    """
    try:
        return message_class.model_validate_json(body)
    except ValidationError as exc:
        if _is_json_error(exc):
            raise MalformedBody(
                f"body is not valid JSON: {exc.errors()[0]['msg']}", body=body, topic=topic
            ) from exc
        raise InvalidMessage(
            f"body does not validate as {message_class.__name__}: {_summary(exc)}",
            body=body,
            topic=topic,
        ) from exc


def _is_json_error(exc: ValidationError) -> bool:
    return any(error["type"] == "json_invalid" for error in exc.errors())


def _summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "(root)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def json_preview(body: bytes, limit: int = 200) -> str:
    """A short printable preview of a body, for logs and CLI tables."""
    try:
        text = json.dumps(json.loads(body), separators=(",", ":"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        text = repr(body[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"
