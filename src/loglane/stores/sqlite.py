"""The SQLite store: views and Loglane's bookkeeping in one WAL-mode database file.

Tables users may query with their own SQL:

    <view>                  one per view: the key field, `doc` (the row as JSON),
                            `doc_version` (the view's version it was written at; NULL
                            for 1) and one column per indexed field, named after it
    loglane_positions       service, topic, partition, offset (next offset to read),
                            origins (MessagePack: the origin watermarks, see loglane.dedupe),
                            published (the seq of the last outcome row published from it)
    loglane_outcomes        seq, service, source_topic, source_partition, then for a
                            command: request_source, request_id, status, detail, event_ids
                            (JSON); messages (MessagePack: [topic, key, value, headers] per
                            message to publish: a command's events, or one other message),
                            handled_at. Rows past their source's `published` are the outbox;
                            published rows are pruned after `ledger_retention` seconds
    loglane_applied         service, topic, partition, position, event_ids (MessagePack list:
                            the ids a batch applied, kept a while to drop duplicates)
    loglane_accepted        service, request_id, fingerprint, topic, partition, offset,
                            accepted_at: the HTTP API's command ledger (pruned after
                            `ledger_retention` seconds)
    loglane_migrations      service, name, applied_at: the service's own migrations run
                            (see loglane.migrations), created with the first
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import msgpack

from loglane._sqlite import SQLiteFile
from loglane.envelope import COMMAND_SOURCE
from loglane.errors import (
    BackendUnavailableError,
    BatchConflictError,
    BatchRejectedError,
    ConfigurationError,
    UnreadableRowError,
)
from loglane.migrations import Migration, Migrator
from loglane.records import (
    TopicPartition,
    pack,
)
from loglane.stores._batch import (
    OUTCOME_READ,
    PruneClock,
    RowSink,
    backlog_sql,
    forget_published,
    outbox_seqs,
    outcome_of,
    read_outbox,
    unpublished_sql,
    write_batch,
)
from loglane.stores._placeholders import to_sqlite
from loglane.stores.base import (
    AcceptedCommand,
    Batch,
    OutboxEntry,
    PendingCommit,
    RequestOutcome,
    Row,
    Statement,
    Store,
    StoreTransaction,
    ViewSwap,
    Watermarks,
    accepted_command,
    decode_watermarks,
    run_pending_migrations,
    stale_batch,
)
from loglane.views import RESERVED_COLUMNS, Document, Key, OutdatedDocument, RowImage, View

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS loglane_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS loglane_positions (
    service TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    origins BLOB,
    published INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (service, topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS loglane_outcomes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    source_topic TEXT,
    source_partition INTEGER,
    request_source TEXT,
    request_id TEXT,
    status TEXT,
    detail TEXT,
    event_ids TEXT,
    messages BLOB,
    handled_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS loglane_outcomes_to_publish
    ON loglane_outcomes (service, source_topic, source_partition, seq)
    WHERE messages IS NOT NULL;
CREATE INDEX IF NOT EXISTS loglane_outcomes_by_request
    ON loglane_outcomes (service, request_source, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS loglane_outcomes_of_no_request
    ON loglane_outcomes (service, source_topic, source_partition, seq) WHERE request_id IS NULL;
CREATE INDEX IF NOT EXISTS loglane_outcomes_by_time ON loglane_outcomes (handled_at);
CREATE TABLE IF NOT EXISTS loglane_applied (
    service TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    position INTEGER NOT NULL,
    event_ids BLOB NOT NULL,
    PRIMARY KEY (service, topic, partition, position)
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
CREATE INDEX IF NOT EXISTS loglane_accepted_by_time ON loglane_accepted (accepted_at);
CREATE TABLE IF NOT EXISTS loglane_parked_keys (
    service TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    key TEXT NOT NULL,
    head TEXT NOT NULL,
    PRIMARY KEY (service, topic, partition, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS loglane_parked_records (
    service TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    key TEXT NOT NULL,
    "offset" INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (service, topic, partition, key, "offset")
) WITHOUT ROWID
"""

_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL", bool: "INTEGER"}
_PRUNE_LEDGER_EVERY = 256
_UNPUBLISHED = to_sqlite(unpublished_sql("loglane_positions", "loglane_outcomes"))
_BACKLOG = to_sqlite(backlog_sql("loglane_positions", "loglane_outcomes"))


class SQLiteStore(Store):
    """A store in the SQLite file at `path`."""

    def __init__(
        self, path: Path | str, *, ledger_retention: float = 86_400.0, synchronous: str = "FULL"
    ) -> None:
        """`ledger_retention` is how many seconds the HTTP API's command ledger remembers a
        request id (a retry with the same `Idempotency-Key` later than that is a new command)
        and a request's outcome. `synchronous=FULL` (the default) makes every commit survive
        a power loss; `NORMAL` may lose the last ones (see docs/durability.md)."""
        self._file = SQLiteFile(path, synchronous=synchronous)
        self.path = self._file.path
        self.ledger_retention = ledger_retention
        self._ledger_writes = 0
        self._prune_clock = PruneClock()
        self._sql: dict[View[Any], _ViewSQL] = {}
        with self._file.transaction() as db:
            _migrate(db)

    @contextmanager
    def transaction(
        self, service: str, fences: Mapping[TopicPartition, int | None]
    ) -> Iterator[StoreTransaction]:
        # Optimistic: the handlers read without the file's write lock, so a worker that stalls
        # there (SIGSTOP) blocks no one; `write` takes the lock and checks that every row
        # the batch read is still as it was, else the batch runs again (BatchConflictError).
        # The positions are checked again under the lock, as they are moved.
        db = self._file.connection()
        for source, expected_position in fences.items():
            row = db.execute(
                "SELECT offset FROM loglane_positions WHERE service = ? AND topic = ? "
                "AND partition = ?",
                (service, source.topic, source.partition),
            ).fetchone()
            if (None if row is None else row[0]) != expected_position:
                raise stale_batch(service, source, expected_position)
        with ExitStack() as writing:
            yield _SQLiteTransaction(self, db, writing)

    def prepare(
        self, service: str, views: Sequence[View[Any]], migrations: Sequence[Migration] = ()
    ) -> None:
        with self._file.transaction() as db:
            for view in views:
                self._sql[view] = _ViewSQL.create(db, view)
            if migrations:
                _run_migrations(db, service, migrations)

    def _view(self, view: View[Any]) -> _ViewSQL:
        sql = self._sql.get(view)
        if sql is None:  # read before any prepare: its table may be older than versions
            columns = _columns(self._file.connection(), f'"{view.name}"')
            sql = _ViewSQL(view, versioned=not columns or "doc_version" in columns)
            if columns:  # a table not created yet is created with versions
                self._sql[view] = sql
        return sql

    def positions(self, service: str) -> dict[TopicPartition, int]:
        rows = self._file.connection().execute(
            "SELECT topic, partition, offset FROM loglane_positions WHERE service = ?", (service,)
        )
        return {TopicPartition(topic, partition): offset for topic, partition, offset in rows}

    def watermarks(self, service: str, source: TopicPartition) -> Watermarks:
        row = (
            self._file.connection()
            .execute(
                "SELECT origins FROM loglane_positions WHERE service = ? AND topic = ? "
                "AND partition = ?",
                (service, source.topic, source.partition),
            )
            .fetchone()
        )
        return decode_watermarks(None if row is None else row[0])

    def parked(self, service: str, source: TopicPartition) -> dict[str, str]:
        return dict(
            self._file.connection().execute(
                "SELECT key, head FROM loglane_parked_keys WHERE service = ? AND topic = ? "
                "AND partition = ?",
                (service, source.topic, source.partition),
            )
        )

    def get(self, view: View[Row], key: Key) -> Row | None:
        with _absent_table_is_empty():
            row = self._file.connection().execute(self._view(view).select_one, (key,)).fetchone()
            return None if row is None else view.load(view.stored(*row), key)
        return None

    def query(
        self,
        view: View[Row],
        *,
        where: Mapping[str, Any] | None = None,
        after: Key | None = None,
        limit: int = 100,
    ) -> list[Row]:
        where = dict(where or {})
        view.check_filters(where)
        select, params = self._view(view).select_where(where, after, limit)
        with _absent_table_is_empty():
            rows = self._file.connection().execute(select, params)
            return [view.load(view.stored(doc, version), key) for key, doc, version in rows]
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

    def outbox(
        self, service: str, sources: Collection[TopicPartition], limit: int
    ) -> list[OutboxEntry]:
        db = self._file.connection()
        return read_outbox(lambda params: db.execute(_UNPUBLISHED, params), service, sources, limit)

    def delete_outbox(self, service: str, published: Mapping[TopicPartition, int]) -> None:
        statements = forget_published("loglane_positions", "loglane_outcomes", service, published)
        if not statements:
            return
        with self._file.transaction() as db:
            for sql, rows in statements:
                db.executemany(to_sqlite(sql), rows)

    def outbox_backlog(self, service: str) -> dict[TopicPartition, int]:
        rows = self._file.connection().execute(_BACKLOG, (service,))
        return {TopicPartition(topic, partition): n for topic, partition, n in rows if n}

    def requests(
        self, service: str, request_ids: Collection[str], *, source: str = COMMAND_SOURCE
    ) -> dict[str, RequestOutcome]:
        db = self._file.connection()
        ids = list(request_ids)
        found: dict[str, RequestOutcome] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = db.execute(  # the latest outcome of a request id reused wins
                f"SELECT {OUTCOME_READ} FROM loglane_outcomes WHERE service = ? "
                f"AND request_source = ? AND request_id IN ({','.join('?' * len(chunk))}) "
                "ORDER BY seq",
                (service, source, *chunk),
            )
            for row in rows:
                found[row[0]] = outcome_of(source, row)
        return found

    def change_marker(self) -> int | None:
        # SQLite's data_version moves when another connection (thread or process) commits;
        # each thread has its own connection, so the caller must poll from one thread.
        (version,) = self._file.connection().execute("PRAGMA data_version").fetchone()
        return int(version)

    # -- the command ledger ---------------------------------------------------------------------

    def claim(
        self,
        service: str,
        request_id: str,
        fingerprint: str,
        *,
        stale_after: float,
        accepted_at: float | None = None,
    ) -> AcceptedCommand | None:
        now = time.time() if accepted_at is None else accepted_at
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
            entry = accepted_command(request_id, *row)
            if (
                entry.position is None
                and entry.fingerprint == fingerprint
                and entry.accepted_at < now - stale_after
                and entry.accepted_at != now  # a new owner needs a token of its own
            ):
                db.execute(
                    "UPDATE loglane_accepted SET accepted_at = ? "
                    "WHERE service = ? AND request_id = ?",
                    (now, service, request_id),
                )
                return None
            return entry

    def record_accepted(
        self, service: str, commands: Sequence[AcceptedCommand]
    ) -> list[AcceptedCommand]:
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
            # a claim is replaced only by its owner: the command with its accepted_at
            db.executemany(
                "INSERT INTO loglane_accepted VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (service, request_id) DO UPDATE SET topic = excluded.topic, "
                "partition = excluded.partition, offset = excluded.offset "
                "WHERE loglane_accepted.topic IS NULL "
                "AND loglane_accepted.accepted_at = excluded.accepted_at",
                rows,
            )
            entries = [
                accepted_command(
                    command.request_id,
                    *db.execute(
                        "SELECT fingerprint, topic, partition, offset, accepted_at "
                        "FROM loglane_accepted WHERE service = ? AND request_id = ?",
                        (service, command.request_id),
                    ).fetchone(),
                )
                for command in commands
            ]
            self._ledger_writes += 1
            if self._ledger_writes % _PRUNE_LEDGER_EVERY == 0:
                db.execute(
                    "DELETE FROM loglane_accepted WHERE accepted_at < ?",
                    (time.time() - self.ledger_retention,),
                )
        return entries

    def release(self, service: str, claim: AcceptedCommand) -> None:
        with self._file.transaction() as db:
            db.execute(
                "DELETE FROM loglane_accepted WHERE service = ? AND request_id = ? "
                "AND topic IS NULL AND accepted_at = ?",
                (service, claim.request_id, claim.accepted_at),
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
        return None if row is None else accepted_command(request_id, *row)

    def close(self) -> None:
        self._file.close()

    # -- rebuilding views by replay (`loglane rebuild`) -----------------------------------------

    def shadow(self, service: str) -> SQLiteStore:
        """The file next to this one, `<name>.rebuild.db` (`<name>.<service>.rebuild.db`
        when the file is not named after the service), written with `synchronous=NORMAL`:
        a power loss costs the replay's last commits, which it makes again."""
        stem = self.path.stem if self.path.stem == service else f"{self.path.stem}.{service}"
        return SQLiteStore(
            self.path.with_name(f"{stem}.rebuild{self.path.suffix or '.db'}"),
            synchronous="NORMAL",
        )

    @contextmanager
    def swap_views(self, service: str, shadow: Store) -> Iterator[ViewSwap]:
        # The file's write lock holds the positions still: every live writer waits on it.
        # It is taken by a write that changes nothing, after a plain BEGIN: BEGIN IMMEDIATE
        # would lock the attached shadow as well, which the replay still writes to.
        if not isinstance(shadow, SQLiteStore):
            raise ConfigurationError("views in SQLite are swapped with those of a SQLite shadow")
        db = self._file.connection()
        db.execute("ATTACH DATABASE ? AS loglane_shadow", (str(shadow.path),))
        try:
            db.execute("BEGIN")
            try:
                try:
                    db.execute("DELETE FROM main.loglane_meta WHERE 0")
                except sqlite3.OperationalError as exc:
                    if _is_busy(exc):
                        raise BackendUnavailableError(f"cannot lock {self.path}: {exc}") from exc
                    raise
                rows = db.execute(
                    "SELECT topic, partition, offset FROM main.loglane_positions WHERE service = ?",
                    (service,),
                )
                positions = {TopicPartition(topic, part): offset for topic, part, offset in rows}
                yield _SQLiteViewSwap(db, positions)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.execute("DETACH DATABASE loglane_shadow")

    def discard(self, service: str) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class _SQLiteTransaction(StoreTransaction):
    """A batch's transaction on the store's file: reads remembered, then one write that
    holds the file's write lock from its start to the commit."""

    def __init__(self, store: SQLiteStore, db: sqlite3.Connection, writing: ExitStack) -> None:
        self._store = store
        self._db = db
        self._writing = writing
        self._reads: dict[View[Any], dict[Key, Document | None]] = {}
        self._sent: _SentCommit | None = None

    def get(self, view: View[Any], key: Key) -> Document | None:
        document = None
        with _absent_table_is_empty():
            row = self._db.execute(self._store._view(view).select_one, (key,)).fetchone()
            document = None if row is None else view.stored(*row)
        self._reads.setdefault(view, {})[key] = document
        return document

    def get_many(self, view: View[Any], keys: Sequence[Key]) -> dict[Key, Document]:
        found = self._read_many(self._db, view, keys)
        reads = self._reads.setdefault(view, {})
        for key in keys:
            reads[key] = found.get(key)
        return dict(found)

    def find(
        self, view: View[Any], where: Mapping[str, Any], limit: int
    ) -> list[tuple[Key, Document]]:
        view.check_filters(where)
        select, params = self._store._view(view).select_where(where, None, limit)
        found: list[tuple[Key, Document]] = []
        with _absent_table_is_empty():
            found = [
                (key, view.stored(doc, version))
                for key, doc, version in self._db.execute(select, params)
            ]
        reads = self._reads.setdefault(view, {})
        for key, document in found:  # checked unchanged at the commit, as `get`'s reads
            reads.setdefault(key, document)
        return found

    def _read_many(
        self, db: sqlite3.Connection, view: View[Any], keys: Sequence[Key]
    ) -> dict[Key, Document]:
        sql = self._store._view(view)
        found: dict[Key, Document] = {}
        current = view.version
        with _absent_table_is_empty():
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                found.update(
                    (key, doc if version == current else OutdatedDocument(doc, version))
                    for key, doc, version in db.execute(sql.select_many(len(chunk)), chunk)
                )
        return found

    def parked_records(self, service: str, source: TopicPartition, key: str) -> list[bytes]:
        rows = self._db.execute(
            "SELECT record FROM loglane_parked_records WHERE service = ? AND topic = ? "
            'AND partition = ? AND key = ? ORDER BY "offset"',
            (service, source.topic, source.partition, key),
        )
        return [bytes(record) for (record,) in rows]

    def _check_reads(self, db: sqlite3.Connection) -> None:
        """Under the write lock: every row the batch read is still as it read it."""
        for view, reads in self._reads.items():
            now = self._read_many(db, view, list(reads))
            changed = [key for key, document in reads.items() if now.get(key) != document]
            if changed:
                raise BatchConflictError(
                    f"{len(changed)} row(s) of {view.name} this batch read changed before it "
                    f"committed (e.g. {changed[0]!r}); it runs again"
                )

    def write_all(
        self,
        batches: Sequence[Batch],
        published: Mapping[TopicPartition, int] | None = None,
    ) -> dict[TopicPartition, int]:
        store = self._store
        sent = None if self._sent is None else self._sent.committing
        # committed on the way out; if sent, by the file's committer thread
        db = self._writing.enter_context(store._file.transaction(sent=sent))
        self._check_reads(db)
        prune = store._prune_clock.due(batches, store.ledger_retention)
        try:
            last_seq = write_batch(
                batches, published or {}, _SQLiteRows(store, db), prune_requests_before=prune
            )
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise BackendUnavailableError(f"cannot write to {store.path}: {exc}") from exc
            raise BatchRejectedError(str(exc)) from exc
        except (sqlite3.Error, OverflowError) as exc:
            raise BatchRejectedError(str(exc)) from exc
        return outbox_seqs(batches, last_seq)

    def send_all(
        self,
        batches: Sequence[Batch],
        published: Mapping[TopicPartition, int] | None = None,
    ) -> PendingCommit:
        """Write now, and leave the commit, as the transaction's block ends, to the file's
        committer thread: the worker polls and decodes its next batch meanwhile."""
        self._sent = _SentCommit(self._store.path)
        self._sent.seqs = self.write_all(batches, published)
        return self._sent


class _SentCommit(PendingCommit):
    """A commit the store file's committer thread makes, once the transaction's block ended."""

    def __init__(self, path: Path) -> None:
        super().__init__({})
        self.seqs: dict[TopicPartition, int] = {}
        self._path = path
        self._commit: Future[None] | None = None

    def committing(self, commit: Future[None]) -> None:
        self._commit = commit

    def wait(self) -> dict[TopicPartition, int]:
        if self._commit is None:
            raise RuntimeError("the commit was never sent: its transaction did not end")
        try:
            self._commit.result()
        except sqlite3.IntegrityError as exc:  # a deferred constraint, checked at COMMIT
            raise BatchRejectedError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise BackendUnavailableError(f"cannot commit to {self._path}: {exc}") from exc
        return self.seqs


class _SQLiteRows(RowSink):
    """Each statement runs at once on the transaction's connection, `?` for `%s`."""

    def __init__(self, store: SQLiteStore, db: sqlite3.Connection) -> None:
        self._store = store
        self._db = db

    def table(self, name: str) -> str:
        return name

    def execute_now(self, sql: str, params: Sequence[Any]) -> int:
        return self._db.execute(sql.replace("%s", "?"), params).rowcount

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.execute(sql.replace("%s", "?"), params)

    def execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._db.executemany(sql.replace("%s", "?"), rows)

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if rows:
            names, marks = ", ".join(columns), ", ".join("?" * len(columns))
            self._db.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)

    def write_view(self, view: View[Any], rows: Mapping[Key, RowImage | None]) -> None:
        sql = self._store._view(view)
        upserts = [
            (key, image.document.decode(), *image.columns)
            for key, image in rows.items()
            if image is not None
        ]
        if upserts:
            self._db.executemany(sql.upsert, upserts)
        deletes = [(key,) for key, image in rows.items() if image is None]
        if deletes:
            self._db.executemany(sql.delete, deletes)

    def run_statements(self, statements: Sequence[Statement]) -> None:
        for statement in statements:
            self._db.execute(to_sqlite(statement.sql), statement.params)

    def id_list(self, ids: list[str]) -> bytes:
        return pack(ids)

    def finish(self, batches: Sequence[Batch]) -> int | None:
        if not any(batch.outbox for batch in batches):
            return None
        (last_seq,) = self._db.execute("SELECT last_insert_rowid()").fetchone()
        return int(last_seq)


class _SQLiteMigrator(Migrator):
    dialect = "sqlite"

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        self._db.execute(to_sqlite(sql), params)


def _run_migrations(db: sqlite3.Connection, service: str, migrations: Sequence[Migration]) -> None:
    """Run, in the prepare's transaction, the migrations of `service` not yet recorded."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS loglane_migrations (service TEXT NOT NULL, "
        "name TEXT NOT NULL, applied_at REAL NOT NULL, PRIMARY KEY (service, name)) WITHOUT ROWID"
    )
    applied = {
        name
        for (name,) in db.execute(
            "SELECT name FROM loglane_migrations WHERE service = ?", (service,)
        )
    }
    run_pending_migrations(
        service,
        migrations,
        applied,
        _SQLiteMigrator(db),
        lambda migration: db.execute(
            "INSERT INTO loglane_migrations VALUES (?, ?, ?)",
            (service, migration.name, time.time()),
        ),
    )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc) or "disk I/O" in str(exc)


def _migrate(db: sqlite3.Connection) -> None:
    """Create Loglane's tables, or bring those of an older version up to this one."""
    if _columns(db, "loglane_meta"):
        row = db.execute("SELECT value FROM loglane_meta WHERE name = 'schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise ConfigurationError(
                f"this database is at schema version {row[0]}, written by a newer Loglane "
                f"than this one (version {SCHEMA_VERSION}); upgrade Loglane"
            )
    positions = _columns(db, "loglane_positions")
    if positions and "origins" not in positions:
        db.execute("ALTER TABLE loglane_positions ADD COLUMN origins BLOB")
    if positions and "published" not in positions:
        db.execute("ALTER TABLE loglane_positions ADD COLUMN published INTEGER NOT NULL DEFAULT 0")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    _move_outcomes_of_version_2(db)
    db.execute(
        "INSERT INTO loglane_meta VALUES ('schema_version', ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )


def _move_outcomes_of_version_2(db: sqlite3.Connection) -> None:
    """Before version 3, outcomes (`loglane_requests`) and the messages to publish
    (`loglane_outbox`, one per row) had tables of their own. The outcomes move first, with
    no source partition: their events were published, or still wait in the outbox, whose
    rows follow, each to be published from its source."""
    requests = _columns(db, "loglane_requests")
    if requests:
        source = "source" if "source" in requests else f"'{COMMAND_SOURCE}'"  # version 1
        events = "events" if "events" in requests else "NULL"
        handled_at = (
            "handled_at" if "handled_at" in requests else "CAST(strftime('%s', 'now') AS REAL)"
        )
        db.execute(
            "INSERT INTO loglane_outcomes (service, request_source, request_id, status, "
            f"detail, event_ids, messages, handled_at) SELECT service, {source}, request_id, "
            f"status, detail, event_ids, {events}, {handled_at} FROM loglane_requests"
        )
        db.execute("DROP TABLE loglane_requests")
    if _columns(db, "loglane_outbox"):
        now = time.time()
        db.executemany(
            "INSERT INTO loglane_outcomes (service, source_topic, source_partition, messages, "
            "handled_at) VALUES (?, ?, ?, ?, ?)",
            (
                (service, topic, partition, pack([message]), now)
                for service, topic, partition, *message in db.execute(
                    "SELECT service, source_topic, source_partition, topic, key, value, "
                    "headers FROM loglane_outbox ORDER BY seq"
                ).fetchall()
            ),
        )
        db.execute("DROP TABLE loglane_outbox")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


@contextmanager
def _absent_table_is_empty() -> Iterator[None]:
    """A view whose worker has not created its table yet reads as empty."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if not str(exc).startswith("no such table"):
            raise


class _ViewSQL:
    """The statements of one view's table, built once from its declaration.

    Every write stores the view's version with the row (a constant of the statement), and
    every read returns it, NULL (rows written before versions) read as 1. A table not yet
    migrated to have versions (`versioned=False`) reads as all version 1.
    """

    def __init__(self, view: View[Any], *, versioned: bool = True) -> None:
        self.table = f'"{view.name}"'
        names = [view.key, "doc", *(column.name for column in view.columns), "doc_version"]
        quoted = ", ".join(f'"{name}"' for name in names)
        updates = ", ".join(f'"{name}" = excluded."{name}"' for name in names[1:])
        marks = ", ".join("?" * (len(names) - 1))
        self.upsert = (
            f"INSERT INTO {self.table} ({quoted}) VALUES ({marks}, {view.version}) "
            f'ON CONFLICT ("{view.key}") DO UPDATE SET {updates}'
        )
        self.delete = f'DELETE FROM {self.table} WHERE "{view.key}" = ?'
        version = "coalesce(doc_version, 1)" if versioned else "1"
        self.select_one = f'SELECT doc, {version} FROM {self.table} WHERE "{view.key}" = ?'
        self.select_rows = f'SELECT "{view.key}", doc, {version} FROM {self.table}'
        self._key = view.key

    def select_many(self, count: int) -> str:
        marks = ",".join("?" * count)
        return f'{self.select_rows} WHERE "{self._key}" IN ({marks})'

    def select_where(
        self, where: Mapping[str, Any], after: Key | None, limit: int
    ) -> tuple[str, list[Any]]:
        """The rows whose columns equal `where`, with keys after `after`, in key order."""
        clauses = [f'"{name}" = ?' for name in where]
        params: list[Any] = list(where.values())
        if after is not None:
            clauses.append(f'"{self._key}" > ?')
            params.append(after)
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return f'{self.select_rows} {condition} ORDER BY "{self._key}" LIMIT ?', [*params, limit]

    @classmethod
    def create(cls, db: sqlite3.Connection, view: View[Any]) -> _ViewSQL:
        """Create the table and its indexes; add the version column to a table older than
        it, and columns for indexes declared since, filled from the stored rows. A column
        whose field changed its type is made again the same way."""
        reserved = sorted(set(RESERVED_COLUMNS) & {view.key, *view.indexes})
        if reserved:
            raise ConfigurationError(
                f"view {view.name!r}: {', '.join(map(repr, reserved))} is a column of every "
                "view table (the row and its version); rename that field"
            )
        sql = cls(view)
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {sql.table} "
            f'("{view.key}" {_SQL_TYPES[view.key_kind]} PRIMARY KEY, doc TEXT NOT NULL, '
            "doc_version INTEGER)"
        )
        existing = {row[1]: row[2] for row in db.execute(f"PRAGMA table_info({sql.table})")}
        if "doc_version" not in existing:
            db.execute(f"ALTER TABLE {sql.table} ADD COLUMN doc_version INTEGER")
        added = []
        for column in view.columns:
            index = f'"{view.name}_by_{column.name}"'
            declared = existing.get(column.name)
            if declared is not None and declared.upper() != _SQL_TYPES[column.kind]:
                # its field changed its type: the column is made again, as a new one is
                db.execute(f"DROP INDEX IF EXISTS {index}")
                db.execute(f'ALTER TABLE {sql.table} DROP COLUMN "{column.name}"')
                declared = None
            if declared is None:
                db.execute(
                    f'ALTER TABLE {sql.table} ADD COLUMN "{column.name}" {_SQL_TYPES[column.kind]}'
                )
                db.execute(
                    f'UPDATE {sql.table} SET "{column.name}" = json_extract(doc, ?)',
                    (f"$.{column.name}",),
                )
                added.append(column.name)
            db.execute(
                f'CREATE INDEX IF NOT EXISTS {index} ON {sql.table} ("{column.name}", "{view.key}")'
            )
        if added and view.upcasters:
            sql._fill_from_upcast_rows(db, view)
        return sql

    def _fill_from_upcast_rows(self, db: sqlite3.Connection, view: View[Any]) -> None:
        """Set the indexed columns of rows of older versions from the rows upcast, as they
        read, not as they were stored; a row that cannot be upcast keeps what it had."""
        names = ", ".join(f'"{column.name}" = ?' for column in view.columns)
        old = db.execute(
            f"{self.select_rows} WHERE coalesce(doc_version, 1) <> ?", (view.version,)
        ).fetchall()
        updates = []
        for key, doc, version in old:
            try:
                row = view.load(view.stored(doc, version), key)
            except UnreadableRowError:
                continue
            updates.append((*view.column_values(row), key))
        db.executemany(f'UPDATE {self.table} SET {names} WHERE "{view.key}" = ?', updates)


class _SQLiteViewSwap(ViewSwap):
    """A swap in the live file's write transaction, the shadow file attached to it."""

    def __init__(self, db: sqlite3.Connection, positions: dict[TopicPartition, int]) -> None:
        self._db = db
        self.positions = positions

    def replace(self, views: Sequence[View[Any]]) -> None:
        for view in views:
            table = '"' + view.name.replace('"', '""') + '"'
            # the shadow's own statements: its table first, then its indexes, unqualified so
            # that they create them in the live file
            statements = self._db.execute(
                "SELECT type, sql FROM loglane_shadow.sqlite_master WHERE tbl_name = ? "
                "AND sql IS NOT NULL ORDER BY type <> 'table'",
                (view.name,),
            ).fetchall()
            if not statements or statements[0][0] != "table":
                raise ConfigurationError(f"the shadow has no table for the view {view.name!r}")
            self._db.execute(f"DROP TABLE IF EXISTS main.{table}")
            for _, sql in statements:
                self._db.execute(sql)
            self._db.execute(f"INSERT INTO main.{table} SELECT * FROM loglane_shadow.{table}")
