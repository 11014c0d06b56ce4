"""The interface every store backend implements.

A store keeps, for each service, in one database and under one transaction per batch:

- the views' rows,
- the input positions (next offset to read, per consumed topic partition),
- the outbox (events and DLQ records written with the batch, published after commit),
- the ids of events applied recently, one row per batch (to drop re-published duplicates),
- request tracking (request id -> status, output event ids and the events themselves),
- the command ledger: commands the HTTP API appended to the input, by request id, so a
  retried POST with the same `Idempotency-Key` is not appended twice and a request is known
  (pending) before any worker handles it.

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

from loglane.errors import ConfigurationError
from loglane.records import Message, Position, TopicPartition
from loglane.views import Key, View

Row = TypeVar("Row", bound=BaseModel)


class RequestStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestOutcome:
    """What became of a command: its status, the events it emitted, and why if not done.

    `events` holds the emitted messages themselves (a rejection's `Rejected` event included),
    so the HTTP API can answer without reading `<service>.out`; a store that does not keep
    them leaves it empty and the ids still tell which events belong to the request.
    """

    request_id: str
    status: RequestStatus
    event_ids: tuple[str, ...] = ()
    detail: str | None = None
    events: tuple[Message, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedCommand:
    """A command the HTTP API appended to a service's input, or is about to (a claim).

    `position` is None while the command is claimed but not yet appended. `fingerprint`
    identifies the command's type and body, so a key reused for another command is caught.
    """

    request_id: str
    fingerprint: str
    position: Position | None
    accepted_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """A message committed with a batch from `source`, waiting to be published."""

    seq: int
    source: TopicPartition
    message: Message


@dataclass(frozen=True, slots=True)
class Statement:
    """A handler's own SQL (`tx.execute`), in the store's dialect and parameter style."""

    sql: str
    params: Sequence[Any] | Mapping[str, Any] = ()


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
    statements: list[Statement] = field(default_factory=list)


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

        The batch's `statements` run after its view writes, in order, in the same transaction.

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

    def requests(self, service: str, request_ids: Collection[str]) -> dict[str, RequestOutcome]:
        """The outcomes of those of `request_ids` that a worker handled, in one round trip.

        The HTTP API asks this for every waiting request at once; backends override the
        one-by-one default with a single query.
        """
        found = {request_id: self.request(service, request_id) for request_id in request_ids}
        return {request_id: outcome for request_id, outcome in found.items() if outcome}

    def change_marker(self) -> int | None:
        """A number that changes whenever another connection commits, or None if unknown.

        Waiters in the HTTP API poll it cheaply and query outcomes only when it moves;
        without it they re-query on a fixed interval.
        """
        return None

    # -- the command ledger (used by the HTTP API) ---------------------------------------------

    def claim(
        self, service: str, request_id: str, fingerprint: str, *, stale_after: float
    ) -> AcceptedCommand | None:
        """Reserve `request_id` before its command is appended; atomic across processes.

        Returns None when the caller now holds the claim: it must append the command and
        then `record_accepted` it, or `release` the claim if the append failed. Otherwise
        returns the existing entry: appended (with a position), or claimed by someone else
        (position None). A claim left without a position for `stale_after` seconds (its
        holder crashed) is taken over, and None is returned.
        """
        raise self._no_ledger()

    def record_accepted(self, service: str, commands: Sequence[AcceptedCommand]) -> None:
        """Record appended commands (each with its position), replacing their claims."""
        raise self._no_ledger()

    def release(self, service: str, request_id: str) -> None:
        """Drop a claim whose command was not appended, so a retry can claim it again."""
        raise self._no_ledger()

    def accepted(self, service: str, request_id: str) -> AcceptedCommand | None:
        """The ledger entry of `request_id`, or None if the API never accepted it."""
        raise self._no_ledger()

    def _no_ledger(self) -> ConfigurationError:
        return ConfigurationError(
            f"{type(self).__name__} keeps no command ledger, which the HTTP API needs; "
            "serve the API with a store that does (sqlite://)"
        )

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
