"""A batch's writes, written once for every SQL store: what a commit writes, in which order.

`write_batch` is the body of every store's batch transaction. A store supplies a `RowSink`,
which says how rows travel (SQLite runs each statement at once; PostgreSQL queues them for one
pipeline and copies large row sets) and adds what only that store has. Loglane's statements
here are written with `%s` parameters and bare table names; a sink qualifies the names and
adapts the parameter style. A handler's own statements (`tx.execute`) run as written.

What a commit writes to `loglane_outcomes` is read back here too, once for both stores: the
outbox (`unpublished_sql`, `read_outbox`, `backlog_sql`), forgetting it (`forget_published`)
and a request's outcome (`OUTCOME_READ`, `outcome_of`, the inverse of `_outcome_row`).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pydantic_core import to_json

from loglane.records import TopicPartition, decode_messages, encode_messages
from loglane.stores.base import (
    Batch,
    OutboxEntry,
    RequestOutcome,
    RequestStatus,
    Statement,
    encode_watermarks,
    stale_batch,
)
from loglane.views import Key, RowImage, View

OUTCOME_COLUMNS = (
    "service",
    "source_topic",
    "source_partition",
    "request_source",
    "request_id",
    "status",
    "detail",
    "event_ids",
    "messages",
    "handled_at",
)
"""The columns of `loglane_outcomes` a commit writes: one row per command handled, with the
messages it emitted, and one per other message to publish (seq numbers them all)."""


class RowSink(ABC):
    """How one store's batch transaction sends what `write_batch` writes."""

    holds_position_locks = False
    """True if the transaction locked the batches' stored positions as it opened."""

    @abstractmethod
    def table(self, name: str) -> str:
        """Loglane's table `name` as this store's statements name it."""

    @abstractmethod
    def execute_now(self, sql: str, params: Sequence[Any]) -> int:
        """Run one of Loglane's statements at once; how many rows it changed."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one of Loglane's statements, at once or with the commit's others."""

    @abstractmethod
    def execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one of Loglane's statements once per row of parameters, with the others."""

    @abstractmethod
    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Insert `rows` into Loglane's `table` (a name `table()` has qualified)."""

    @abstractmethod
    def write_view(self, view: View[Any], rows: Mapping[Key, RowImage | None]) -> None:
        """Upsert the images of `view`'s rows, and delete those whose image is None."""

    @abstractmethod
    def run_statements(self, statements: Sequence[Statement]) -> None:
        """Run a handler's own statements, in the store's dialect, as written."""

    id_list_mark = "%s"
    """The placeholder of an `id_list` value in Loglane's statements."""

    @abstractmethod
    def id_list(self, ids: list[str]) -> Any:
        """Applied event ids as the store keeps them in one column."""

    @abstractmethod
    def finish(self, batches: Sequence[Batch]) -> int | None:
        """Send whatever waits; the seq of the last outcome row written (None without any
        message, or when the store reads it only with the commit's results, as PostgreSQL
        does)."""


def write_batch(
    batches: Sequence[Batch],
    published: Mapping[TopicPartition, int],
    sink: RowSink,
    *,
    prune_requests_before: float | None,
) -> int | None:
    """Write `batches` through `sink`, in this order: the fenced positions (with the origin
    watermarks), the view rows and the handlers' statements (batch by batch), the published
    watermarks moved up to `published`, the outcome rows (each command's outcome with the
    events it emitted, and every other message to publish), the applied ids, the parked keys.
    Returns the seq of the last outcome row written, None without any message to publish."""
    for batch in batches:
        _advance_position(batch, sink)
    for batch in batches:
        for view, rows in batch.writes.items():
            sink.write_view(view, rows)
        if batch.statements:
            sink.run_statements(batch.statements)
    service = batches[0].service
    positions, outcomes = sink.table("loglane_positions"), sink.table("loglane_outcomes")
    applied = sink.table("loglane_applied")
    for sql, params in forget_published(positions, outcomes, service, published):
        sink.execute_many(sql, params)
    now = time.time()
    sink.insert(outcomes, OUTCOME_COLUMNS, [row for b in batches for row in _outcome_rows(b, now)])
    for batch in batches:
        source = _source(batch)
        if batch.applied_ids:
            sink.execute(
                f"INSERT INTO {applied} VALUES (%s, %s, %s, %s, {sink.id_list_mark})",
                (*source, batch.position, sink.id_list(batch.applied_ids)),
            )
        if batch.forget_applied_before is not None:
            sink.execute(
                f"DELETE FROM {applied} WHERE service = %s AND topic = %s AND partition = %s "
                "AND position < %s",
                (*source, batch.forget_applied_before),
            )
    _write_parking(batches, sink)
    if prune_requests_before is not None:
        sink.execute(
            # never a row still to publish: those stay until published, however old
            f"DELETE FROM {outcomes} WHERE handled_at < %s AND (messages IS NULL OR "
            f"source_topic IS NULL OR seq <= (SELECT published FROM {positions} p WHERE "
            f"p.service = {outcomes}.service AND p.topic = {outcomes}.source_topic AND "
            f"p.partition = {outcomes}.source_partition))",
            (prune_requests_before,),
        )
    return sink.finish(batches)


def forget_published(
    positions: str, outcomes: str, service: str, published: Mapping[TopicPartition, int]
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The statements (each with its rows of parameters) that mark the outcome rows of each
    source published up to its seq in `published`: a row that is no command's outcome (an
    event's output, a dead letter) is deleted, as no one will ask for it; then the source's
    watermark moves up. Rows below the old watermark are not looked at again."""
    if not published:
        return []
    sources = [(service, tp.topic, tp.partition, seq) for tp, seq in published.items()]
    return [
        (
            f"DELETE FROM {outcomes} WHERE request_id IS NULL AND service = %s "
            "AND source_topic = %s AND source_partition = %s AND seq <= %s "
            f"AND seq > (SELECT published FROM {positions} WHERE service = %s AND topic = %s "
            "AND partition = %s)",
            [(*source, *source[:3]) for source in sources],
        ),
        (
            f"UPDATE {positions} SET published = %s WHERE service = %s AND topic = %s "
            "AND partition = %s AND published < %s",
            [(seq, service, topic, partition, seq) for service, topic, partition, seq in sources],
        ),
    ]


def unpublished_sql(positions: str, outcomes: str) -> str:
    """The outbox of one source, the outcome rows it has still to publish, oldest first: with
    messages, past its published watermark (read once, so the index range starts there).
    Parameters: service, topic, partition, the same again, and a limit."""
    return (
        f"SELECT seq, messages FROM {outcomes} WHERE service = %s AND source_topic = %s "
        "AND source_partition = %s AND messages IS NOT NULL AND seq > coalesce((SELECT "
        f"published FROM {positions} WHERE service = %s AND topic = %s AND partition = %s), 0) "
        "ORDER BY seq LIMIT %s"
    )


def read_outbox(
    select: Callable[[tuple[Any, ...]], Iterable[tuple[int, bytes]]],
    service: str,
    sources: Collection[TopicPartition],
    limit: int,
) -> list[OutboxEntry]:
    """Up to about `limit` entries of the outboxes of `sources`, source by source, oldest
    first; `select` runs `unpublished_sql` with the parameters given and yields its rows."""
    entries: list[OutboxEntry] = []
    for source in sorted(sources):
        rows = select((*(service, source.topic, source.partition) * 2, limit - len(entries)))
        entries.extend(
            OutboxEntry(seq=seq, source=source, message=message)
            for seq, messages in rows
            for message in decode_messages(messages)
        )
        if len(entries) >= limit:
            break
    return entries


OUTCOME_READ = "request_id, status, event_ids, detail, messages"
"""The columns of an outcome row `outcome_of` reads, for a request's SELECT."""


def outcome_of(source: str, row: tuple[Any, ...]) -> RequestOutcome:
    """The outcome a row of `OUTCOME_READ` holds, of a request posted by `source`."""
    request_id, status, event_ids, detail, messages = row
    return RequestOutcome(
        request_id=request_id,
        source=source,
        status=RequestStatus(status),
        event_ids=tuple(json.loads(event_ids)),
        detail=detail,
        events=decode_messages(messages),
    )


def backlog_sql(positions: str, outcomes: str) -> str:
    """Per position of a service (its one parameter): how many rows wait in its outbox."""
    return (
        f"SELECT p.topic, p.partition, (SELECT count(*) FROM {outcomes} o "
        "WHERE o.service = p.service AND o.source_topic = p.topic AND o.source_partition = "
        f"p.partition AND o.messages IS NOT NULL AND o.seq > p.published) FROM {positions} p "
        "WHERE p.service = %s"
    )


def _outcome_rows(batch: Batch, now: float) -> Iterator[tuple[Any, ...]]:
    """The batch's rows of `loglane_outcomes`, in the order its events were handled: a
    command's row carries the events it emitted (its outcome's `events`), and a message no
    outcome holds (an event's output, a dead letter) goes in a row of its own."""
    service, topic, partition = _source(batch)
    outcomes = batch.requests
    emitted_by = {id(message): n for n, o in enumerate(outcomes) for message in o.events}
    written = 0  # the outcomes written so far
    for message in batch.outbox:
        n = emitted_by.get(id(message))
        if n is None:
            lone = encode_messages([message])
            yield (service, topic, partition, None, None, None, None, None, lone, now)
        while n is not None and written <= n:  # up to the outcome that emitted it, in order
            yield _outcome_row(service, topic, partition, outcomes[written], now)
            written += 1
    for outcome in outcomes[written:]:
        yield _outcome_row(service, topic, partition, outcome, now)


def _outcome_row(
    service: str, topic: str, partition: int, outcome: RequestOutcome, now: float
) -> tuple[Any, ...]:
    return (
        service,
        topic,
        partition,
        outcome.source,
        outcome.request_id,
        outcome.status.value,
        outcome.detail,
        to_json(outcome.event_ids).decode(),
        encode_messages(outcome.events),
        now,
    )


def _write_parking(batches: Sequence[Batch], sink: RowSink) -> None:
    """Release keys (and the records that waited), then park keys and their records."""
    keys, records = sink.table("loglane_parked_keys"), sink.table("loglane_parked_records")
    released = [(*_source(b), key) for b in batches for key in b.unpark]
    if released:
        where = "service = %s AND topic = %s AND partition = %s AND key = %s"
        sink.execute_many(f"DELETE FROM {keys} WHERE {where}", released)
        sink.execute_many(f"DELETE FROM {records} WHERE {where}", released)
    parked = [(*_source(b), key, head) for b in batches for key, head in b.park.items()]
    if parked:
        sink.execute_many(
            f"INSERT INTO {keys} (service, topic, partition, key, head) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (service, topic, partition, key) "
            "DO UPDATE SET head = excluded.head",
            parked,
        )
    waiting = [(*_source(b), *record) for b in batches for record in b.parked_records]
    if waiting:
        sink.execute_many(
            f'INSERT INTO {records} (service, topic, partition, key, "offset", record) '
            "VALUES (%s, %s, %s, %s, %s, %s)",
            waiting,
        )


def outbox_seqs(batches: Sequence[Batch], last_seq: int | None) -> dict[TopicPartition, int]:
    """What `StoreTransaction.write_all` returns: the seq of the last outbox row written,
    for every source that wrote one. Another source's rows may lie below it, but no later
    row of these sources: seqs only grow, and the transaction holds their positions."""
    if last_seq is None:
        return {}
    return {batch.source: last_seq for batch in batches if batch.outbox}


def _source(batch: Batch) -> tuple[str, str, int]:
    return (batch.service, batch.source.topic, batch.source.partition)


def _advance_position(batch: Batch, sink: RowSink) -> None:
    """Move the batch's position (and its watermarks), only from where the batch began: the
    fence. A sink whose transaction locked the stored position rows when it opened, and
    found them at the batches' fences, sends the update with the rest; a position not
    stored yet had no row to lock, and is inserted at once to learn if another got there
    first."""
    source = batch.source
    positions = sink.table("loglane_positions")
    origins = None if batch.origins is None else encode_watermarks(batch.origins)
    if batch.expected_position is None:
        changed = sink.execute_now(
            f'INSERT INTO {positions} (service, topic, partition, "offset", origins) '
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (batch.service, source.topic, source.partition, batch.position, origins),
        )
    else:
        update = (
            f'UPDATE {positions} SET "offset" = %s, origins = coalesce(%s, origins) '
            'WHERE service = %s AND topic = %s AND partition = %s AND "offset" = %s'
        )
        params = (
            batch.position,
            origins,
            batch.service,
            source.topic,
            source.partition,
            batch.expected_position,
        )
        if sink.holds_position_locks:  # checked when the row was locked: send it with the rest
            sink.execute(update, params)
            return
        changed = sink.execute_now(update, params)
    if changed != 1:
        raise stale_batch(batch.service, source, batch.expected_position)


class PruneClock:
    """When a store prunes old request outcomes: with every `every`-th batch that has some."""

    def __init__(self, every: int = 1024) -> None:
        self.every = every
        self._batches = 0

    def due(self, batches: Sequence[Batch], retention: float) -> float | None:
        """The time before which outcomes go now, or None if not with these batches."""
        if not any(batch.requests for batch in batches):
            return None
        self._batches += 1
        return time.time() - retention if self._batches % self.every == 0 else None
