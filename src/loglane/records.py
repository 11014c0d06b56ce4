"""What a log holds: records in topic partitions, and messages on their way in."""

from __future__ import annotations

import json
from dataclasses import dataclass

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True, slots=True)
class Message:
    """A record to append; the log picks the partition from the key."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
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


def encode_headers(headers: Headers) -> str:
    """Headers as JSON text for a database column; any bytes survive the trip."""
    # latin-1 maps each byte to one code point and back
    return json.dumps([[name, value.decode("latin-1")] for name, value in headers])


def decode_headers(text: str) -> Headers:
    return tuple((name, value.encode("latin-1")) for name, value in json.loads(text))
