"""What a log holds: records in topic partitions, and messages on their way in."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

Headers = tuple[tuple[str, bytes], ...]


class TopicPartition(NamedTuple):
    """One partition of a topic: a named tuple, as it keys a dict several times per record
    and a tuple's hash and equality cost a fraction of a dataclass's."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(slots=True)  # not frozen: a frozen init costs 3x on the hot path; never changed
class Message:
    """A record to append; the log picks the partition from the key."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = ()
    _packed_headers: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def packed_headers(self) -> bytes:
        """The headers as MessagePack, packed once, however many writes take them."""
        packed = self._packed_headers
        if packed is None:
            packed = self._packed_headers = encode_headers(self.headers)
        return packed


@dataclass(slots=True)  # not frozen, as Message; never changed
class Record:
    """A record read back from the log, at its offset in one partition."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Position:
    """Where an appended record landed: its partition and offset."""

    topic: str
    partition: int
    offset: int


def encode_headers(headers: Headers) -> bytes:
    """Headers as bytes for a database column (MessagePack: compact, fast, any bytes)."""
    return pack(headers)


def decode_headers(blob: bytes) -> Headers:
    return msgpack.unpackb(blob, use_list=False)  # type: ignore[no-any-return]


def encode_messages(messages: Sequence[Message]) -> bytes | None:
    """Messages as bytes for a database column (MessagePack), None for none. Each one's
    headers are inline, as a list of pairs (one packing for all), unless they were packed
    already (`Message.packed_headers`): then those bytes, which a log that keeps headers
    packed takes as they are."""
    if not messages:
        return None
    return pack([(m.topic, m.key, m.value, _headers_to_pack(m)) for m in messages])


def _headers_to_pack(message: Message) -> Headers | bytes:
    packed = message._packed_headers
    return message.headers if packed is None else packed


def decode_messages(blob: bytes | None) -> tuple[Message, ...]:
    if not blob:
        return ()
    return tuple(_message(*fields) for fields in msgpack.unpackb(blob))


def _message(topic: str, key: bytes | None, value: bytes, headers: Any) -> Message:
    if not isinstance(headers, bytes):  # inline, as a list of pairs
        return Message(topic, key, value, tuple((name, data) for name, data in headers))
    message = Message(topic, key, value, decode_headers(headers))
    message._packed_headers = headers  # published again from the outbox: not packed again
    return message


def encode_record(record: Record) -> bytes:
    """A record as bytes for a database column (MessagePack), all of it."""
    fields = (record.topic, record.partition, record.offset, record.key, record.value)
    return pack((*fields, record.headers, record.timestamp_ms))


def decode_record(blob: bytes) -> Record:
    topic, partition, offset, key, value, headers, timestamp_ms = msgpack.unpackb(blob)
    return Record(topic, partition, offset, key, value, tuple(map(tuple, headers)), timestamp_ms)


_packers = threading.local()


def pack(value: object) -> bytes:
    """`value` as MessagePack, by this thread's packer, made once: `msgpack.packb` builds
    one with a 256 KiB buffer for every call, which in a worker's pass costs more than the
    packing."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer()
    return packer.pack(value)  # type: ignore[no-any-return]
