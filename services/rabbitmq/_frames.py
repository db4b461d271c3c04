"""Internal: reading AMQP frames that pika's decoder rejects: message headers it cannot decode.

RabbitMQ passes message headers through as any client wrote them. A few valid field
tables make pika's decoder raise: a timestamp beyond the year 9999 (``datetime`` cannot
hold it), a table nested deeper than Python's recursion limit, a field type pika does not
know. pika then aborts the whole connection, so every delivery in flight comes back, and
the message that caused it is redelivered and aborts the next connection too: one foreign
message stops a worker.

`TolerantSelectConnection` decodes such a content header with the table left out: the
message arrives with the header `x-leveret-undecodable-headers` (why) and
`x-leveret-raw-headers` (the table's bytes, kept for a dead letter), and every other
property intact. Frames pika decodes are not touched (the normal path costs nothing).

It also writes a message's frames (method, content header, body) to the socket as one
piece: pika writes each frame with a system call of its own, and each wakes the broker.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TypeAlias

import pika.frame
import pika.spec
from pika.adapters.select_connection import SelectConnection

Frame: TypeAlias = pika.frame.Frame | pika.frame.ProtocolHeader

UNDECODABLE_HEADERS = "x-leveret-undecodable-headers"
RAW_HEADERS = "x-leveret-raw-headers"


class TolerantSelectConnection(SelectConnection):
    """A `SelectConnection` that survives message headers pika cannot decode."""

    def _read_frame(self) -> tuple[int, Frame | None]:
        return decode_frame(self._frame_buffer)  # type: ignore[attr-defined]

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        # pika's own writes each frame apart (three socket writes for every message).
        data = marshaled_frames[0] if len(marshaled_frames) == 1 else b"".join(marshaled_frames)
        self.bytes_sent += len(data)  # type: ignore[attr-defined]
        self.frames_sent += len(marshaled_frames)  # type: ignore[attr-defined]
        self._adapter_emit_data(data)  # type: ignore[attr-defined]


def decode_frame(data: bytes) -> tuple[int, Frame | None]:
    """pika's `decode_frame`, falling back to `_header_without_table` for content headers.

    Raises:
        Exception: What pika raised, for any frame that is not a content header whose only
            fault is its header table.
    """
    try:
        return pika.frame.decode_frame(data)
    except Exception as exc:
        decoded = _header_without_table(data, exc)
        if decoded is None:
            raise
        return decoded


def _header_without_table(data: bytes, error: Exception) -> tuple[int, Frame | None] | None:
    """The content header frame at the start of `data`, its header table replaced."""
    try:
        frame_type, channel, size = struct.unpack_from(">BHL", data, 0)
        end = pika.spec.FRAME_HEADER_SIZE + size + pika.spec.FRAME_END_SIZE
        if frame_type != pika.spec.FRAME_HEADER or len(data) < end:
            return None
        payload = data[pika.spec.FRAME_HEADER_SIZE : end - 1]
        class_id, _weight, body_size = struct.unpack_from(">HHQ", payload, 0)
        if class_id != pika.spec.BasicProperties.INDEX:
            return None
        properties = _properties_without_table(payload[12:], error)
    except Exception:  # noqa: BLE001  # not what we can repair: pika's error stands
        return None
    if properties is None:
        return None
    return end, pika.frame.Header(channel, body_size, properties)


def _properties_without_table(encoded: bytes, error: Exception) -> pika.spec.BasicProperties | None:
    """Decode basic properties with their header table skipped (by its length prefix)."""
    flags = struct.unpack_from(">H", encoded, 0)[0]
    if flags & 1 or not flags & pika.spec.BasicProperties.FLAG_HEADERS:
        return None  # more flag words, or no table: the fault is elsewhere
    offset = 2
    for flag in (
        pika.spec.BasicProperties.FLAG_CONTENT_TYPE,
        pika.spec.BasicProperties.FLAG_CONTENT_ENCODING,
    ):
        if flags & flag:
            offset += 1 + encoded[offset]  # a short string: length octet, then bytes
    table_length = struct.unpack_from(">I", encoded, offset)[0]
    table = encoded[offset + 4 : offset + 4 + table_length]
    rest = encoded[offset + 4 + table_length :]
    without = struct.pack(">H", flags & ~pika.spec.BasicProperties.FLAG_HEADERS)
    properties = pika.spec.BasicProperties()
    properties.decode(without + encoded[2:offset] + rest)
    properties.headers = {
        UNDECODABLE_HEADERS: f"{type(error).__name__}: {error}"[:500],
        RAW_HEADERS: bytes(table),
    }
    return properties
