"""The interface every store backend implements.

A store keeps, for each service, in one database and under one transaction per batch:

- the views' rows,
- the input positions (next offset to read, per consumed topic partition), and with each
  the origin watermarks: per input partition of another Loglane service whose output it
  consumes, the last (offset, index) applied from there, so re-published copies are dropped,
- the outbox (events and DLQ records written with the batch, published after commit),
- the ids of events applied recently, one row per batch (to drop re-published duplicates),
- request tracking ((source, request id) -> status, output event ids and the events
  themselves), pruned after a retention period,
- the command ledger: commands the HTTP API appended to the input, by request id, so a
  retried POST with the same `Idempotency-Key` is not appended twice and a request is known
  (pending) before any worker handles it.

`transaction` opens the single write of the hot path: the batches of every partition one poll
returned, in one transaction. It is fenced: it only proceeds if each partition's stored
position is still the one its batch started from, so a worker that lost a partition cannot
commit a stale batch over the new owner's work. The worker runs a batch's handlers
inside it, and batches of different partitions that read and write one row never lose an
update: the store serializes their reads (PostgreSQL's row locks) or refuses the write of a
batch whose rows changed since it read them (SQLite), with `BatchConflictError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel

from loglane.envelope import COMMAND_SOURCE
from loglane.errors import ConfigurationError, StaleBatchError
from loglane.migrations import Migration, Migrator, pending
from loglane.records import Message, Position, TopicPartition, pack
from loglane.views import Document, Key, RowImage, View

Row = TypeVar("Row", bound=BaseModel)


class RequestStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(slots=True, kw_only=True)  # not frozen: built per command; never changed
class RequestOutcome:
    """What became of a command: its status, the events it emitted, and why if not done.

    `events` holds the emitted messages themselves (a rejection's `Rejected` event included),
    so the HTTP API can answer without reading `<service>.out`; a store that does not keep
    them leaves it empty and the ids still tell which events belong to the request.
    """

    request_id: str
    status: RequestStatus
    source: str = COMMAND_SOURCE
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


Watermarks = dict[str, tuple[int, int]]
"""Per origin partition (`topic/partition`): the (offset, index) of the last event applied."""


@dataclass(slots=True, kw_only=True)
class Batch:
    """Everything one batch of one input partition changes, committed in one transaction
    (with the batches of other partitions polled at the same time).

    `writes` maps each view's keys to the row image to upsert, or None to delete; batches
    written together are applied in order, so when their handlers shared one unit of work
    its writes may all sit on the last. `origins`, when given, replaces the stored
    watermarks of `source`. `outbox` holds every message to publish, in order; a request
    outcome's `events` are those of them its command emitted, which the store keeps once,
    with the outcome (and publishes with it: events of an outcome missing from `outbox` are
    published too).
    """

    service: str
    source: TopicPartition
    expected_position: int | None
    position: int
    writes: dict[View[Any], dict[Key, RowImage | None]] = field(default_factory=dict)
    outbox: list[Message] = field(default_factory=list)
    requests: list[RequestOutcome] = field(default_factory=list)
    applied_ids: list[str] = field(default_factory=list)
    forget_applied_before: int | None = None
    origins: Watermarks | None = None
    statements: list[Statement] = field(default_factory=list)
    # keys parked behind a dead letter (`loglane.parking`): keys released (with their
    # records), keys parked or given a new head (key -> the head's `topic:partition:offset`),
    # and records that wait behind a head (key, offset, the record encoded)
    unpark: list[str] = field(default_factory=list)
    park: dict[str, str] = field(default_factory=dict)
    parked_records: list[tuple[str, int, bytes]] = field(default_factory=list)


def migration_failed(service: str, migration: Migration, exc: Exception) -> ConfigurationError:
    return ConfigurationError(
        f"service {service!r}: its migration {migration.name!r} failed: {exc}; none of the "
        "migrations this start ran was kept: fix it and start again"
    )


def run_pending_migrations(
    service: str,
    declared: Sequence[Migration],
    applied: set[str],
    migrator: Migrator,
    record: Callable[[Migration], object],
) -> None:
    """Run the migrations of `service` not in `applied`, in their declared order, each
    followed by `record`; the first that fails raises `migration_failed` (the caller's
    transaction then rolls every one of them back)."""
    for migration in pending(declared, applied):
        try:
            migration.run(migrator)
        except Exception as exc:
            raise migration_failed(service, migration, exc) from exc
        record(migration)


def stale_batch(
    service: str, source: TopicPartition, expected_position: int | None
) -> StaleBatchError:
    return StaleBatchError(
        f"{service}: the stored position of {source} is no longer {expected_position}; "
        "another worker owns the partition now"
    )


def encode_watermarks(watermarks: Watermarks) -> bytes:
    return pack(watermarks)


def decode_watermarks(blob: bytes | None) -> Watermarks:
    if not blob:
        return {}
    return {place: (offset, index) for place, (offset, index) in msgpack.unpackb(blob).items()}


def accepted_command(
    request_id: str,
    fingerprint: str,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    accepted_at: float,
) -> AcceptedCommand:
    """A ledger entry from its row: appended if it has a position, else a claim."""
    position = None
    if topic is not None and partition is not None and offset is not None:
        position = Position(topic, partition, offset)
    return AcceptedCommand(
        request_id=request_id, fingerprint=fingerprint, position=position, accepted_at=accepted_at
    )


class StoreTransaction(ABC):
    """The open transaction of a poll's batches: reads under its locks, then one write."""

    @abstractmethod
    def get(self, view: View[Any], key: Key) -> Document | None:
        """The document of `view`'s row at `key` as committed, or None; locked against other
        transactions' reads of the same key until this one ends. A row stored at another
        version of the view comes as an `OutdatedDocument` (see `View.stored`)."""

    def get_many(self, view: View[Any], keys: Sequence[Key]) -> dict[Key, Document]:
        """The documents of those of `keys` that have a row, locked as `get` locks them;
        backends override this one-by-one default with a single round trip."""
        found = {key: self.get(view, key) for key in keys}
        return {key: document for key, document in found.items() if document is not None}

    def parked_records(self, service: str, source: TopicPartition, key: str) -> list[bytes]:
        """The records parked behind the head of `key` in `source`, oldest first, encoded
        (`loglane.records.encode_record`)."""
        raise NotImplementedError(f"{type(self).__name__} does not park keys")

    def find(
        self, view: View[Any], where: Mapping[str, Any], limit: int
    ) -> list[tuple[Key, Document]]:
        """The keys and documents of up to `limit` committed rows of `view` whose indexed
        fields (or key) equal `where`, in key order, read as `get` reads them: locked
        against other transactions' reads of the same keys until this one ends (PostgreSQL),
        or checked unchanged at the commit (SQLite). Rows that come to match while the
        transaction is open are not seen: only the rows found are held."""
        raise NotImplementedError(f"{type(self).__name__} cannot find rows by their fields")

    def write(self, batch: Batch) -> int | None:
        """Write one batch (see `write_all`); the seq of its last outbox entry, or None."""
        return self.write_all([batch]).get(batch.source)

    def send_all(
        self,
        batches: Sequence[Batch],
        published: Mapping[TopicPartition, int] | None = None,
    ) -> PendingCommit:
        """Write `batches` as `write_all` does and end the transaction with them: the
        context then exits without waiting for the commit, which `PendingCommit.wait`
        confirms once the caller has done other work. A store that cannot send a commit
        ahead (this default) writes now and commits as the context exits."""
        return PendingCommit(self.write_all(batches, published))

    @abstractmethod
    def write_all(
        self,
        batches: Sequence[Batch],
        published: Mapping[TopicPartition, int] | None = None,
    ) -> dict[TopicPartition, int]:
        """Write `batches`, one per partition the transaction fenced: their positions, view
        writes and statements (in batch order), outbox entries, applied ids and request
        outcomes. Forget the outbox entries `published` says were published since they were
        committed: per source, those up to and including its seq. Once per transaction.

        Returns, per source with outbox entries, a seq at least that of its last entry and
        below that of any entry committed later. Raises `BatchRejectedError` if the store
        refuses the data (the transaction is then unusable and must end),
        `BatchConflictError` on a lost lock race.
        """


class PendingCommit:
    """A commit sent to the store, not yet confirmed; this one was done as it was made."""

    def __init__(self, seqs: dict[TopicPartition, int]) -> None:
        self._seqs = seqs

    def wait(self) -> dict[TopicPartition, int]:
        """Block until the commit is durable; the outbox seqs, as `write_all` returns them.
        Raises what the write and the commit would have raised in the transaction:
        `BatchConflictError`, `BatchRejectedError` or `BackendUnavailableError`; the batches
        were then not committed (or, for `BackendUnavailableError`, may have been)."""
        return self._seqs


class Store(ABC):
    """A materialization DB backend."""

    @abstractmethod
    def prepare(
        self, service: str, views: Sequence[View[Any]], migrations: Sequence[Migration] = ()
    ) -> None:
        """Create (or migrate) Loglane's tables and the tables of `views`, then run those of
        the service's own `migrations` this store has not run yet (see `loglane.migrations`);
        `ConfigurationError` if one fails, and then none of them is kept."""

    @abstractmethod
    def positions(self, service: str) -> dict[TopicPartition, int]:
        """The stored input positions of `service`: the next offset to read per partition."""

    def parked(self, service: str, source: TopicPartition) -> dict[str, str]:
        """The keys of `source` parked behind a dead letter, each with the place
        (`topic:partition:offset`) of the record at its head."""
        return {}

    @abstractmethod
    def watermarks(self, service: str, source: TopicPartition) -> Watermarks:
        """The origin watermarks stored with `source`'s position (empty if none)."""

    @abstractmethod
    def get(self, view: View[Row], key: Key) -> Row | None:
        """The committed row of `view` at `key`, or None; upcast if it is of an older version
        of the view, and `UnreadableRowError` if it does not validate even so."""

    @abstractmethod
    def query(
        self,
        view: View[Row],
        *,
        where: Mapping[str, Any] | None = None,
        after: Key | None = None,
        limit: int = 100,
    ) -> list[Row]:
        """Rows whose indexed fields equal `where`, in key order, with keys after `after`;
        upcast as `get` upcasts them."""

    @abstractmethod
    def applied(
        self, service: str, source: TopicPartition, since: int
    ) -> list[tuple[int, list[str]]]:
        """Ids applied from `source` by batches ending after position `since`, oldest first,
        as (batch end position, ids)."""

    @abstractmethod
    def transaction(
        self, service: str, fences: Mapping[TopicPartition, int | None]
    ) -> AbstractContextManager[StoreTransaction]:
        """Open the transaction of batches of the partitions in `fences`, or raise
        `StaleBatchError` if the stored position of one is no longer its fence (None: no
        position stored yet).

        Leaving the block normally commits; an exception rolls everything back.
        """

    def commit(self, batch: Batch) -> int | None:
        """Apply `batch` atomically, or raise `StaleBatchError` and change nothing.

        The batch's `statements` run after its view writes, in order, in the same transaction.

        Returns the seq of the batch's last outbox entry (None without any), so the worker
        can publish the entries it holds in memory and then delete them by seq.
        """
        with self.transaction(batch.service, {batch.source: batch.expected_position}) as tx:
            return tx.write(batch)

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

    def request(
        self, service: str, request_id: str, *, source: str = COMMAND_SOURCE
    ) -> RequestOutcome | None:
        """The outcome of the request `request_id` that `source` posted, or None while no
        worker has handled it (or after the retention period)."""
        return self.requests(service, [request_id], source=source).get(request_id)

    @abstractmethod
    def requests(
        self, service: str, request_ids: Collection[str], *, source: str = COMMAND_SOURCE
    ) -> dict[str, RequestOutcome]:
        """The outcomes of those of `request_ids` (posted by `source`) that a worker
        handled, in one round trip: the HTTP API asks for every waiting request at once."""

    def change_marker(self) -> int | None:
        """A number that changes whenever another connection commits, or None if unknown.

        Waiters in the HTTP API poll it cheaply and query outcomes only when it moves;
        without it they re-query on a fixed interval.
        """
        return None

    # -- the command ledger (used by the HTTP API) ---------------------------------------------

    def claim(
        self,
        service: str,
        request_id: str,
        fingerprint: str,
        *,
        stale_after: float,
        accepted_at: float | None = None,
    ) -> AcceptedCommand | None:
        """Reserve `request_id` before its command is appended; atomic across processes.

        Returns None when the caller now holds the claim: it must append the command and
        then `record_accepted` it, or `release` the claim if the append failed. Otherwise
        returns the existing entry: appended (with a position), or claimed by someone else
        (position None).

        The claim's `accepted_at` (default: now) is its owner token: `record_accepted` and
        `release` act on a claim only for a command with that same `accepted_at`. A claim
        left without a position for `stale_after` seconds (its holder crashed, or its
        append hangs) is taken over by a claim of the same fingerprint, whose later
        `accepted_at` then owns it; a stale claim of another fingerprint is returned as is.
        """
        raise self._no_ledger()

    def record_accepted(
        self, service: str, commands: Sequence[AcceptedCommand]
    ) -> list[AcceptedCommand]:
        """Record appended commands (each with its position); the ledger's entry of each.

        A command replaces its own claim (the entry of its request id with its
        `accepted_at` and no position yet), or creates its entry if there is none (a
        command posted without a key). The entry of another request is left alone and
        returned in the command's place: the command's claim was taken over while it was
        being appended. So the returned entry equals the command exactly when it was
        recorded (or had been, by an earlier call).
        """
        raise self._no_ledger()

    def release(self, service: str, claim: AcceptedCommand) -> None:
        """Drop the caller's `claim` (its command was not appended), so a retry can claim
        the request id again; a claim taken over meanwhile is left to its new holder."""
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

    # -- rebuilding views by replay (`loglane rebuild`) -----------------------------------------

    def shadow(self, service: str) -> Store:
        """A store of the same backend beside this one, for `service`'s views rebuilt by
        replay: positions, views and all, apart from the live ones (SQLite: a file next to
        this one; PostgreSQL: the schema `<schema>__rebuild`). Opening it again finds what
        an earlier rebuild left there, so a rebuild resumes from its stored positions."""
        raise ConfigurationError(f"{type(self).__name__} cannot keep a shadow for a rebuild")

    def swap_views(self, service: str, shadow: Store) -> AbstractContextManager[ViewSwap]:
        """Open the transaction of a swap: `service`'s positions in this (live) store are
        held still, so no batch of a live worker commits until it ends, and the
        `ViewSwap` tells them. Replay the shadow up to exactly those positions, then
        `replace` the views with the shadow's. Leaving the block normally commits: readers
        see the old views or the new ones, never a mix; an exception rolls it back."""
        raise ConfigurationError(f"{type(self).__name__} cannot swap views")

    def discard(self, service: str) -> None:
        """Delete what a `shadow` store holds for `service` (its file or its schema), once
        its views were swapped in or the rebuild is abandoned; the store is closed. Only for
        a store `shadow` returned: on a live store it would delete the live data."""
        raise ConfigurationError(f"{type(self).__name__} cannot discard a shadow")


class ViewSwap(ABC):
    """An open swap (`Store.swap_views`): the live positions it holds still, and the step
    that replaces live views with the shadow's in the same transaction."""

    positions: dict[TopicPartition, int]
    """The live store's stored positions of the service, which cannot move until the end."""

    @abstractmethod
    def replace(self, views: Sequence[View[Any]]) -> None:
        """Replace each view's table (rows and indexes) with the shadow's. Nothing else
        changes: positions, outbox, request outcomes and the ledger stay the live ones."""
