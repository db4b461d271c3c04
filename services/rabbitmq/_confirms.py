"""Internal: the confirm bookkeeping of one channel in confirm mode.

Shared by the publisher (`_publisher`) and the worker's republisher (`_republish`). A
channel in confirm mode numbers what it publishes 1, 2, 3… (delivery tags); the broker
answers each with an ack or a nack, one tag at a time or ``multiple`` up to a tag. A
``mandatory`` publish that no queue took comes back first as a ``basic.return``, which
carries no tag: it is matched by message id to the earliest message with that id written
and not returned yet (one id may be in flight twice: a retry of a timed-out publish).

The bookkeeping belongs to one channel: a new channel numbers from 1 again, so each channel
gets a new `Confirms`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import pika.exceptions
from pika.spec import Basic

CHANNEL_GONE = (
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelClosed,
    pika.exceptions.ConnectionClosed,
    OSError,
)
"""What ``basic_publish`` raises when the channel or connection went: nothing was written,
and the message waits for the next channel. Anything else means it cannot be encoded."""


class Identified(Protocol):
    """A message on its way, as far as confirms go: its id matches a ``basic.return``."""

    @property
    def message_id(self) -> str:
        """The AMQP message id."""
        ...


T = TypeVar("T", bound=Identified)


class Confirms(Generic[T]):
    """What one channel in confirm mode wrote and awaits a confirm for (I/O thread only)."""

    __slots__ = ("_by_id", "_next_tag", "_order", "_returned", "_unconfirmed")

    def __init__(self) -> None:
        self._next_tag = 1
        self._unconfirmed: dict[int, T] = {}
        self._order: deque[int] = deque()  # tags in write order, confirmed ones dropped lazily
        # Tags written and not confirmed, by message id, to match a basic.return: one tag,
        # or a deque of them in write order when one id is in flight twice.
        self._by_id: dict[str, int | deque[int]] = {}
        self._returned: dict[int, str] = {}  # tag -> why no queue took it

    def __len__(self) -> int:
        """How many messages await their confirm."""
        return len(self._unconfirmed)

    def sent(self, item: T) -> None:
        """`item` was just written with the next delivery tag."""
        tag = self._next_tag
        self._next_tag = tag + 1
        self._unconfirmed[tag] = item
        self._order.append(tag)
        message_id = item.message_id
        waiting = self._by_id.get(message_id)
        if waiting is None:
            self._by_id[message_id] = tag
        elif isinstance(waiting, int):
            self._by_id[message_id] = deque((waiting, tag))
        else:
            waiting.append(tag)

    def returned(self, message_id: str, reason: str) -> None:
        """A ``basic.return``: no queue took the earliest message `message_id` not returned
        yet; its confirm, which follows, says so (`confirmed`)."""
        waiting = self._by_id.get(message_id)
        tags = (waiting,) if isinstance(waiting, int) else (waiting or ())
        for tag in tags:
            if tag not in self._returned:
                self._returned[tag] = reason
                return

    def confirmed(
        self, method: Basic.Ack | Basic.Nack, settle: Callable[[T, bool, str | None], None]
    ) -> None:
        """Call `settle(item, ok, returned)` for each message a confirm settles, in write
        order: `ok` for an ack, `returned` why no queue took it (None: routed)."""
        ok = isinstance(method, Basic.Ack)
        tag: int = method.delivery_tag
        order = self._order
        unconfirmed = self._unconfirmed
        if method.multiple:
            while order and order[0] <= tag:
                first = order.popleft()
                item = unconfirmed.pop(first, None)
                if item is not None:
                    settle(item, ok, self._forget(first, item))
            return
        item = unconfirmed.pop(tag, None)
        while order and order[0] not in unconfirmed:
            order.popleft()
        if item is not None:
            settle(item, ok, self._forget(tag, item))

    def in_flight(self) -> list[T]:
        """What awaits a confirm, in write order."""
        return [self._unconfirmed[tag] for tag in sorted(self._unconfirmed)]

    def _forget(self, tag: int, item: T) -> str | None:
        message_id = item.message_id
        waiting = self._by_id.get(message_id)
        if isinstance(waiting, deque):
            waiting.remove(tag)  # the first, but for a confirm out of order
            if not waiting:
                del self._by_id[message_id]
        elif waiting is not None:
            del self._by_id[message_id]
        return self._returned.pop(tag, None) if self._returned else None
