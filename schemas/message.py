"""The `Message` base class and the registry of topics."""

from __future__ import annotations

import re
import threading
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from leveret.schemas.casing import snake_case
from leveret.schemas.errors import DefinitionError

_TOPIC = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
MAX_TOPIC_BYTES = 197
"""The longest topic: a delayed message's routing key (and the binding that brings it
home) is the topic behind 28 one-character delay bits and ``t.`` (58 bytes), and AMQP
routing and binding keys hold at most 255 bytes."""

_registry_lock = threading.Lock()
_topics: dict[str, type[Message]] = {}


class Message(BaseModel):
    """Base class of every typed message.

    A message is a frozen pydantic model published under a topic. The topic is given as a
    class keyword (``class OrderPlaced(Message, topic="orders.placed")``) or derived from the
    class name in snake case. Two classes may not claim one topic.

    Unknown fields in incoming JSON are ignored (tolerant reader), so producers can add
    fields before consumers know them.

    Raises:
        DefinitionError: At class creation, for an invalid topic or one already claimed by
            another class.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    __topic__: ClassVar[str] = ""

    def __init_subclass__(cls, *, topic: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__topic__ = topic if topic is not None else snake_case(cls.__name__)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _register(cls)

    @classmethod
    def topic(cls) -> str:
        """The topic this message class is published under."""
        return cls.__topic__


def _register(cls: type[Message]) -> None:
    topic = cls.__topic__
    if not _TOPIC.match(topic) or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise DefinitionError(
            f"{cls.__qualname__}: invalid topic {topic!r}; use dot-separated words of "
            f"letters, digits, '_' or '-' (at most {MAX_TOPIC_BYTES} bytes)"
        )
    with _registry_lock:
        other = _topics.get(topic)
        # The same class defined again (a module imported twice, a reload) takes over.
        if other is not None and (other.__module__, other.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise DefinitionError(
                f"topic {topic!r} of {cls.__module__}.{cls.__qualname__} is already claimed "
                f"by {other.__module__}.{other.__qualname__}; give one of them "
                f"another topic (class {cls.__name__}(Message, topic=...))"
            )
        _topics[topic] = cls


def message_class(topic: str) -> type[Message] | None:
    """The message class registered for a topic, if one is imported in this process."""
    return _topics.get(topic)


def registered_topics() -> dict[str, type[Message]]:
    """A snapshot of every topic known to this process and its class."""
    with _registry_lock:
        return dict(_topics)
