"""A foreign AMQP client for the tests: publishes any properties, headers and bodies.

Plain pika with publisher confirms, plus `RawHeaders`: properties whose header table is
given as raw bytes, for what other clients send and pika cannot (a timestamp past the year
9999, tables nested thousands deep, field types pika does not know).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
from pika.spec import BasicProperties


class RawHeaders(BasicProperties):
    """Basic properties with the header table given as encoded bytes (without its length)."""

    def __init__(self, table: bytes, **properties: Any) -> None:
        super().__init__(**properties)
        self.table = table

    def encode(self) -> list[bytes]:
        encoded = b"".join(super().encode())
        flags = struct.unpack_from(">H", encoded, 0)[0] | BasicProperties.FLAG_HEADERS
        offset = 2
        for flag in (BasicProperties.FLAG_CONTENT_TYPE, BasicProperties.FLAG_CONTENT_ENCODING):
            if flags & flag:
                offset += 1 + encoded[offset]
        table = struct.pack(">I", len(self.table)) + self.table
        return [struct.pack(">H", flags) + encoded[2:offset] + table + encoded[offset:]]


def field(name: str, kind: bytes, payload: bytes) -> bytes:
    """One encoded table entry: a short-string name, a type octet, the value's bytes."""
    raw = name.encode()
    return bytes([len(raw)]) + raw + kind + payload


def far_timestamp(name: str = "x-when") -> bytes:
    """A timestamp field of 2^64 - 1 seconds: valid AMQP, beyond what `datetime` holds."""
    return field(name, b"T", struct.pack(">Q", 2**64 - 1))


def nested_tables(depth: int, name: str = "x-deep") -> bytes:
    """A table field nested `depth` tables deep."""
    inner = b""
    for _ in range(depth):
        inner = field("a", b"F", struct.pack(">I", len(inner)) + inner)
    return field(name, b"F", struct.pack(">I", len(inner)) + inner)


class Client:
    """A confirmed pika channel to the test broker."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: BasicProperties | None = None,
        *,
        exchange: str = "",
    ) -> None:
        """Publish and wait for the broker's confirm."""
        self.channel.basic_publish(exchange, routing_key, body, properties or BasicProperties())


@contextmanager
def client(url: str) -> Iterator[Client]:
    """A foreign client connected to `url`, closed on exit."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield Client(channel)
    finally:
        if connection.is_open:
            connection.close()
