"""The interface every log backend implements, shaped after Kafka's consumer groups.

A worker joins its service's consumer group with a `RebalanceListener`. `Consumer.poll` runs
the group protocol and calls the listener, on the polling thread, whenever partitions are
assigned to the member or taken from it. A partition is owned by one member at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from loglane.records import Message, Position, Record, TopicPartition


class RebalanceListener(Protocol):
    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """The member now owns `partitions`; seek them before the next poll returns records."""

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """The member no longer owns `partitions` (handed over, or lost after a timeout)."""


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """The oldest offset still held (retention) and the offset the next record will get."""

    start: int
    end: int


class Publishing(Protocol):
    """Messages on their way into the log (`Log.publish`)."""

    def wait(self) -> None:
        """Return once every message is appended durably; raise if one could not be."""


class _Published:
    def wait(self) -> None:
        pass


PUBLISHED: Publishing = _Published()
"""Messages appended already."""


class Consumer(ABC):
    """One member of a consumer group, reading the partitions it owns."""

    @abstractmethod
    def poll(self, timeout: float, max_records: int) -> list[Record]:
        """Records from owned partitions, each partition in offset order; [] after `timeout`.
        A consumer made to `spread` shares them out among the partitions that have any (see
        `Log.consumer`)."""

    @abstractmethod
    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read `partition` from `offset` on; below the retained start, from the start."""

    @abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int], *, wait: bool = True) -> None:
        """Record the next offsets to read, for lag monitoring. Ignored for unowned partitions.

        With `wait=False` the commit may still be on its way when this returns, and a failure
        is logged rather than raised: a later commit carries the offsets again."""

    @abstractmethod
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group; owned partitions move to other members at once."""


class Log(ABC):
    """A set of partitioned topics: append, read from a position, consume as a group."""

    packs_headers = False
    """Whether the log keeps a record's headers packed (`Message.packed_headers`): a worker
    then packs an emitted event's headers as it takes the event in, for its outbox row and
    its record to share."""

    @abstractmethod
    def create_topic(self, name: str, partitions: int, *, retention_ms: int | None = None) -> int:
        """Create `name` unless it exists; return its actual partition count."""

    @abstractmethod
    def partition_count(self, topic: str) -> int:
        """How many partitions `topic` has; `ConfigurationError` if it does not exist."""

    @abstractmethod
    def append(self, messages: Sequence[Message]) -> list[Position]:
        """Append durably, partitioning by key with murmur2; positions in `messages` order."""

    def publish(self, messages: Sequence[Message]) -> Publishing:
        """Start appending `messages` as `append` does, without waiting for the log to
        acknowledge them: `wait()` on the result does, and raises what `append` would.
        Messages published later land after these in their partitions. This default
        appends at once."""
        self.append(messages)
        return PUBLISHED

    @abstractmethod
    def read(self, partition: TopicPartition, offset: int, max_records: int) -> list[Record]:
        """Up to `max_records` records of `partition` from `offset` on."""

    @abstractmethod
    def offsets(self, topic: str) -> dict[int, PartitionOffsets]:
        """Start and end offsets of every partition of `topic`."""

    @abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The offsets `group` committed for the partitions of `topic` it has committed."""

    @abstractmethod
    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        spread: bool = False,
    ) -> Consumer:
        """Join `group` as a new member consuming `topics`.

        A consumer made to `spread` shares each poll out among the partitions that have
        records, as far as the backend knows of them, rather than filling it from one
        partition's backlog: a worker that runs coroutine handlers side by side asks for it,
        as its pass lasts as long as the longest partition's share."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the log's data stays."""
