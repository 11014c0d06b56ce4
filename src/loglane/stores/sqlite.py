"""The SQLite store: views and Loglane's bookkeeping in one WAL-mode database file.

Tables users may query with their own SQL:

    <view>                  one per view: the key field, `doc` (the row as JSON), and one
                            column per indexed field, each named after its field
    loglane_positions       service, topic, partition, offset (next offset to read)
    loglane_outbox          seq, service, source_topic, source_partition, topic, key, value, headers
    loglane_applied         service, topic, partition, position, event_ids (MessagePack list:
                            the ids a batch applied, kept a while to drop duplicates)
    loglane_requests        service, request_id, status, event_ids (JSON), detail,
                            events (MessagePack: [topic, key, value, headers] per
                            emitted message, so the HTTP API can answer with them)
    loglane_accepted        service, request_id, fingerprint, topic, partition, offset,
                            accepted_at: the HTTP API's command ledger (pruned after
                            `ledger_retention` seconds)
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack

from loglane._sqlite import SQLiteFile
from loglane.errors import ConfigurationError, StaleBatchError
from loglane.faults import crash_point
from loglane.records import Message, Position, TopicPartition, decode_headers, encode_headers
from loglane.stores.base import (
    AcceptedCommand,
    Batch,
    OutboxEntry,
    RequestOutcome,
    RequestStatus,
    Row,
    Store,
)
from loglane.views import Key, View

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS loglane_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS loglane_positions (
    service TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (service, topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS loglane_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS loglane_outbox_by_source
    ON loglane_outbox (service, source_topic, source_partition, seq);
CREATE TABLE IF NOT EXISTS loglane_applied (
    service TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    position INTEGER NOT NULL,
    event_ids BLOB NOT NULL,
    PRIMARY KEY (service, topic, partition, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS loglane_requests (
    service TEXT NOT NULL,
    request_id TEXT NOT NULL,
    status TEXT NOT NULL,
    event_ids TEXT NOT NULL,
    detail TEXT,
    PRIMARY KEY (service, request_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS loglane_accepted (
    service TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    topic TEXT,
    partition INTEGER,
    offset INTEGER,
    accepted_at REAL NOT NULL,
    PRIMARY KEY (service, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS loglane_accepted_by_time ON loglane_accepted (accepted_at)
"""

_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL", bool: "INTEGER"}
_PRUNE_LEDGER_EVERY = 256


class SQLiteStore(Store):
    """A store in the SQLite file at `path`."""

    def __init__(
        self, path: Path | str, *, ledger_retention: float = 86_400.0, synchronous: str = "NORMAL"
    ) -> None:
        """`ledger_retention` is how many seconds the HTTP API's command ledger remembers a
        request id: a retry with the same `Idempotency-Key` later than that is a new command."""
        self._file = SQLiteFile(path, synchronous=synchronous)
        self.path = self._file.path
        self.ledger_retention = ledger_retention
        self._ledger_writes = 0
        self._sql: dict[View[Any], _ViewSQL] = {}
        self._file.execute_script(_SCHEMA)
        with self._file.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO loglane_meta VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(loglane_requests)")}
            if "events" not in columns:
                db.execute("ALTER TABLE loglane_requests ADD COLUMN events BLOB")

    def prepare(self, service: str, views: Sequence[View[Any]]) -> None:
        with self._file.transaction() as db:
            for view in views:
                self._sql[view] = _ViewSQL.create(db, view)

    def _view(self, view: View[Any]) -> _ViewSQL:
        sql = self._sql.get(view)
        if sql is None:
            sql = self._sql[view] = _ViewSQL(view)
        return sql

    def positions(self, service: str) -> dict[TopicPartition, int]:
        rows = self._file.connection().execute(
            "SELECT topic, partition, offset FROM loglane_positions WHERE service = ?", (service,)
        )
        return {TopicPartition(topic, partition): offset for topic, partition, offset in rows}

    def get(self, view: View[Row], key: Key) -> Row | None:
        with _absent_table_is_empty():
            row = self._file.connection().execute(self._view(view).select_one, (key,)).fetchone()
            return None if row is None else view.load(row[0])
        return None

    def query(
        self,
        view: View[Row],
        *,
        where: Mapping[str, Any] | None = None,
        after: Key | None = None,
        limit: int = 100,
    ) -> list[Row]:
        sql = self._view(view)
        where = dict(where or {})
        view.check_filters(where)
        clauses = [f'"{name}" = ?' for name in where]
        params: list[Any] = list(where.values())
        if after is not None:
            clauses.append(f'"{view.key}" > ?')
            params.append(after)
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with _absent_table_is_empty():
            rows = self._file.connection().execute(
                f'SELECT doc FROM {sql.table} {condition} ORDER BY "{view.key}" LIMIT ?',
                (*params, limit),
            )
            return [view.load(doc) for (doc,) in rows]
        return []

    def applied(
        self, service: str, source: TopicPartition, since: int
    ) -> list[tuple[int, list[str]]]:
        rows = self._file.connection().execute(
            "SELECT position, event_ids FROM loglane_applied WHERE service = ? AND topic = ? "
            "AND partition = ? AND position > ? ORDER BY position",
            (service, source.topic, source.partition, since),
        )
        return [(position, list(msgpack.unpackb(ids))) for position, ids in rows]

    def commit(self, batch: Batch) -> int | None:
        last_seq = None
        source_row = (batch.service, batch.source.topic, batch.source.partition)
        with self._file.transaction() as db:
            self._advance_position(db, batch)
            for view, rows in batch.writes.items():
                sql = self._view(view)
                upserts = [
                    (key, view.document(row).decode(), *view.column_values(row))
                    for key, row in rows.items()
                    if row is not None
                ]
                deletes = [(key,) for key, row in rows.items() if row is None]
                if upserts:
                    db.executemany(sql.upsert, upserts)
                if deletes:
                    db.executemany(sql.delete, deletes)
            for statement in batch.statements:
                db.execute(statement.sql, statement.params)
            if batch.outbox:
                db.executemany(
                    "INSERT INTO loglane_outbox (service, source_topic, source_partition, "
                    "topic, key, value, headers) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            batch.service,
                            batch.source.topic,
                            batch.source.partition,
                            message.topic,
                            message.key,
                            message.value,
                            encode_headers(message.headers),
                        )
                        for message in batch.outbox
                    ],
                )
                (last_seq,) = db.execute("SELECT last_insert_rowid()").fetchone()
            if batch.applied_ids:
                db.execute(
                    "INSERT INTO loglane_applied VALUES (?, ?, ?, ?, ?)",
                    (*source_row, batch.position, msgpack.packb(batch.applied_ids)),
                )
            if batch.forget_applied_before is not None:
                db.execute(
                    "DELETE FROM loglane_applied WHERE service = ? AND topic = ? "
                    "AND partition = ? AND position < ?",
                    (*source_row, batch.forget_applied_before),
                )
            if batch.requests:
                db.executemany(
                    "INSERT INTO loglane_requests "
                    "(service, request_id, status, event_ids, detail, events) "
                    "VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (service, request_id) DO UPDATE SET status = excluded.status, "
                    "event_ids = excluded.event_ids, detail = excluded.detail, "
                    "events = excluded.events",
                    [
                        (
                            batch.service,
                            outcome.request_id,
                            outcome.status.value,
                            json.dumps(outcome.event_ids),
                            outcome.detail,
                            _encode_messages(outcome.events),
                        )
                        for outcome in batch.requests
                    ],
                )
            if batch.published_upto is not None:
                self._delete_outbox(db, batch.service, {batch.source: batch.published_upto})
            crash_point("in_commit")
        return last_seq

    @staticmethod
    def _advance_position(db: sqlite3.Connection, batch: Batch) -> None:
        """Move the batch's position, only from where the batch began: the fence."""
        source = batch.source
        if batch.expected_position is None:
            cursor = db.execute(
                "INSERT INTO loglane_positions VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (batch.service, source.topic, source.partition, batch.position),
            )
        else:
            cursor = db.execute(
                "UPDATE loglane_positions SET offset = ? WHERE service = ? AND topic = ? "
                "AND partition = ? AND offset = ?",
                (
                    batch.position,
                    batch.service,
                    source.topic,
                    source.partition,
                    batch.expected_position,
                ),
            )
        if cursor.rowcount != 1:
            raise StaleBatchError(
                f"{batch.service}: the stored position of {source} is no longer "
                f"{batch.expected_position}; another worker owns the partition now"
            )

    def outbox(
        self, service: str, sources: Collection[TopicPartition], limit: int
    ) -> list[OutboxEntry]:
        db = self._file.connection()
        entries: list[OutboxEntry] = []
        for source in sorted(sources):
            rows = db.execute(
                "SELECT seq, topic, key, value, headers FROM loglane_outbox WHERE service = ? "
                "AND source_topic = ? AND source_partition = ? ORDER BY seq LIMIT ?",
                (service, source.topic, source.partition, limit - len(entries)),
            )
            entries.extend(
                OutboxEntry(
                    seq=seq,
                    source=source,
                    message=Message(topic, key, value, decode_headers(headers)),
                )
                for seq, topic, key, value, headers in rows
            )
            if len(entries) >= limit:
                break
        return entries

    def delete_outbox(self, service: str, published: Mapping[TopicPartition, int]) -> None:
        with self._file.transaction() as db:
            self._delete_outbox(db, service, published)

    @staticmethod
    def _delete_outbox(
        db: sqlite3.Connection, service: str, published: Mapping[TopicPartition, int]
    ) -> None:
        db.executemany(
            "DELETE FROM loglane_outbox WHERE service = ? AND source_topic = ? "
            "AND source_partition = ? AND seq <= ?",
            [(service, tp.topic, tp.partition, seq) for tp, seq in published.items()],
        )

    def outbox_backlog(self, service: str) -> dict[TopicPartition, int]:
        rows = self._file.connection().execute(
            "SELECT source_topic, source_partition, count(*) FROM loglane_outbox "
            "WHERE service = ? GROUP BY source_topic, source_partition",
            (service,),
        )
        return {TopicPartition(topic, partition): n for topic, partition, n in rows}

    def request(self, service: str, request_id: str) -> RequestOutcome | None:
        return self.requests(service, [request_id]).get(request_id)

    def requests(self, service: str, request_ids: Collection[str]) -> dict[str, RequestOutcome]:
        db = self._file.connection()
        ids = list(request_ids)
        found: dict[str, RequestOutcome] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = db.execute(
                "SELECT request_id, status, event_ids, detail, events FROM loglane_requests "
                f"WHERE service = ? AND request_id IN ({','.join('?' * len(chunk))})",
                (service, *chunk),
            )
            for request_id, status, event_ids, detail, events in rows:
                found[request_id] = RequestOutcome(
                    request_id=request_id,
                    status=RequestStatus(status),
                    event_ids=tuple(json.loads(event_ids)),
                    detail=detail,
                    events=_decode_messages(events),
                )
        return found

    def change_marker(self) -> int | None:
        # SQLite's data_version moves when another connection (thread or process) commits;
        # each thread has its own connection, so the caller must poll from one thread.
        (version,) = self._file.connection().execute("PRAGMA data_version").fetchone()
        return int(version)

    # -- the command ledger ---------------------------------------------------------------------

    def claim(
        self, service: str, request_id: str, fingerprint: str, *, stale_after: float
    ) -> AcceptedCommand | None:
        now = time.time()
        with self._file.transaction() as db:
            row = db.execute(
                "SELECT fingerprint, topic, partition, offset, accepted_at FROM loglane_accepted "
                "WHERE service = ? AND request_id = ?",
                (service, request_id),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO loglane_accepted (service, request_id, fingerprint, accepted_at) "
                    "VALUES (?, ?, ?, ?)",
                    (service, request_id, fingerprint, now),
                )
                return None
            entry = _accepted(request_id, *row)
            if entry.position is None and entry.accepted_at < now - stale_after:
                db.execute(
                    "UPDATE loglane_accepted SET fingerprint = ?, accepted_at = ? "
                    "WHERE service = ? AND request_id = ?",
                    (fingerprint, now, service, request_id),
                )
                return None
            return entry

    def record_accepted(self, service: str, commands: Sequence[AcceptedCommand]) -> None:
        rows = []
        for command in commands:
            if command.position is None:
                raise ValueError(f"request {command.request_id} has no position to record")
            position = command.position
            rows.append(
                (
                    service,
                    command.request_id,
                    command.fingerprint,
                    position.topic,
                    position.partition,
                    position.offset,
                    command.accepted_at,
                )
            )
        with self._file.transaction() as db:
            db.executemany(
                "INSERT INTO loglane_accepted VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (service, request_id) DO UPDATE SET topic = excluded.topic, "
                "partition = excluded.partition, offset = excluded.offset",
                rows,
            )
            self._ledger_writes += 1
            if self._ledger_writes % _PRUNE_LEDGER_EVERY == 0:
                db.execute(
                    "DELETE FROM loglane_accepted WHERE accepted_at < ?",
                    (time.time() - self.ledger_retention,),
                )

    def release(self, service: str, request_id: str) -> None:
        with self._file.transaction() as db:
            db.execute(
                "DELETE FROM loglane_accepted WHERE service = ? AND request_id = ? "
                "AND topic IS NULL",
                (service, request_id),
            )

    def accepted(self, service: str, request_id: str) -> AcceptedCommand | None:
        row = (
            self._file.connection()
            .execute(
                "SELECT fingerprint, topic, partition, offset, accepted_at FROM loglane_accepted "
                "WHERE service = ? AND request_id = ?",
                (service, request_id),
            )
            .fetchone()
        )
        return None if row is None else _accepted(request_id, *row)

    def close(self) -> None:
        self._file.close()


@contextmanager
def _absent_table_is_empty() -> Iterator[None]:
    """A view whose worker has not created its table yet reads as empty."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if not str(exc).startswith("no such table"):
            raise


def _accepted(
    request_id: str,
    fingerprint: str,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    accepted_at: float,
) -> AcceptedCommand:
    position = None
    if topic is not None and partition is not None and offset is not None:
        position = Position(topic, partition, offset)
    return AcceptedCommand(
        request_id=request_id, fingerprint=fingerprint, position=position, accepted_at=accepted_at
    )


def _encode_messages(messages: Sequence[Message]) -> bytes | None:
    if not messages:
        return None
    return msgpack.packb(  # type: ignore[no-any-return]
        [(m.topic, m.key, m.value, m.headers) for m in messages]
    )


def _decode_messages(blob: bytes | None) -> tuple[Message, ...]:
    if not blob:
        return ()
    return tuple(
        Message(topic, key, value, tuple(map(tuple, headers)))
        for topic, key, value, headers in msgpack.unpackb(blob)
    )


class _ViewSQL:
    """The statements of one view's table, built once from its declaration."""

    def __init__(self, view: View[Any]) -> None:
        self.table = f'"{view.name}"'
        names = [view.key, "doc", *(column.name for column in view.columns)]
        quoted = ", ".join(f'"{name}"' for name in names)
        updates = ", ".join(f'"{name}" = excluded."{name}"' for name in names[1:])
        self.upsert = (
            f"INSERT INTO {self.table} ({quoted}) VALUES ({', '.join('?' * len(names))}) "
            f'ON CONFLICT ("{view.key}") DO UPDATE SET {updates}'
        )
        self.delete = f'DELETE FROM {self.table} WHERE "{view.key}" = ?'
        self.select_one = f'SELECT doc FROM {self.table} WHERE "{view.key}" = ?'

    @classmethod
    def create(cls, db: sqlite3.Connection, view: View[Any]) -> _ViewSQL:
        """Create the table and its indexes; add columns for indexes declared since."""
        if "doc" in (view.key, *view.indexes):
            raise ConfigurationError(
                f"view {view.name!r}: 'doc' is the column holding the row; rename that field"
            )
        sql = cls(view)
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {sql.table} "
            f'("{view.key}" {_SQL_TYPES[view.key_kind]} PRIMARY KEY, doc TEXT NOT NULL)'
        )
        existing = {row[1] for row in db.execute(f"PRAGMA table_info({sql.table})")}
        for column in view.columns:
            if column.name not in existing:
                db.execute(
                    f'ALTER TABLE {sql.table} ADD COLUMN "{column.name}" {_SQL_TYPES[column.kind]}'
                )
                db.execute(
                    f'UPDATE {sql.table} SET "{column.name}" = json_extract(doc, ?)',
                    (f"$.{column.name}",),
                )
            db.execute(
                f'CREATE INDEX IF NOT EXISTS "{view.name}_by_{column.name}" '
                f'ON {sql.table} ("{column.name}", "{view.key}")'
            )
        return sql
