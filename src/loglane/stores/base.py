"""The interface every store backend implements.

A store keeps, for each service, in one database and under one transaction per batch:

- the views' rows,
- the input positions (next offset to read, per consumed topic partition),
- the outbox (events and DLQ records written with the batch, published after commit),
- the ids of events applied recently, one row per batch (to drop re-published duplicates),
- request tracking (request id -> status, output event ids).

`commit` is the single write of the hot path. It is fenced: the position update only succeeds
if the stored position is still the one the batch started from, so a worker that lost its
partition cannot commit a stale batch over the new owner's work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel

from loglane.records import Message, TopicPartition
from loglane.views import Key, View

Row = TypeVar("Row", bound=BaseModel)


class RequestStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestOutcome:
    """What became of a command: its status, the events it emitted, and why if not done."""

    request_id: str
    status: RequestStatus
    event_ids: tuple[str, ...] = ()
    detail: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """A message committed with a batch from `source`, waiting to be published."""

    seq: int
    source: TopicPartition
    message: Message


@dataclass(slots=True, kw_only=True)
class Batch:
    """Everything one batch of one input partition changes, committed in one transaction."""

    service: str
    source: TopicPartition
    expected_position: int | None
    position: int
    writes: dict[View[Any], dict[Key, Any]] = field(default_factory=dict)
    outbox: list[Message] = field(default_factory=list)
    requests: list[RequestOutcome] = field(default_factory=list)
    applied_ids: list[str] = field(default_factory=list)
    forget_applied_before: int | None = None
    published_upto: int | None = None


class Store(ABC):
    """A materialization DB backend."""

    @abstractmethod
    def prepare(self, service: str, views: Sequence[View[Any]]) -> None:
        """Create (or migrate) Loglane's tables and the tables of `views`."""

    @abstractmethod
    def positions(self, service: str) -> dict[TopicPartition, int]:
        """The stored input positions of `service`: the next offset to read per partition."""

    @abstractmethod
    def get(self, view: View[Row], key: Key) -> Row | None:
        """The committed row of `view` at `key`, or None."""

    @abstractmethod
    def query(
        self,
        view: View[Row],
        *,
        where: Mapping[str, Any] | None = None,
        after: Key | None = None,
        limit: int = 100,
    ) -> list[Row]:
        """Rows whose indexed fields equal `where`, in key order, with keys after `after`."""

    @abstractmethod
    def applied(
        self, service: str, source: TopicPartition, since: int
    ) -> list[tuple[int, list[str]]]:
        """Ids applied from `source` by batches ending after position `since`, oldest first,
        as (batch end position, ids)."""

    @abstractmethod
    def commit(self, batch: Batch) -> int | None:
        """Apply `batch` atomically, or raise `StaleBatchError` and change nothing.

        Returns the seq of the batch's last outbox entry (None without any), so the worker
        can publish the entries it holds in memory and later delete them by seq.
        """

    @abstractmethod
    def outbox(
        self, service: str, sources: Collection[TopicPartition], limit: int
    ) -> list[OutboxEntry]:
        """Unpublished outbox entries of `sources`, oldest first."""

    @abstractmethod
    def delete_outbox(self, service: str, published: Mapping[TopicPartition, int]) -> None:
        """Forget published entries: those of each source up to and including its seq."""

    @abstractmethod
    def outbox_backlog(self, service: str) -> dict[TopicPartition, int]:
        """How many entries wait in the outbox, per source partition."""

    @abstractmethod
    def request(self, service: str, request_id: str) -> RequestOutcome | None:
        """The outcome of a request, or None while no worker has handled it."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
