"""The PostgreSQL store: views and Loglane's bookkeeping in one schema per service.

By default each service gets the schema named after it (`schema="{service}"`); a fixed name
puts every service in one schema, told apart by the `service` columns. Tables users may query
with their own SQL, named as in the SQLite store:

    <view>                  one per view: the key field, `doc` (the row as JSONB), and one
                            column per indexed field, each named after its field, each with
                            a btree index `<view>_by_<field>`
    loglane_positions       service, topic, partition, "offset" (next offset to read)
    loglane_outbox          seq, service, source_topic, source_partition, topic, key, value, headers
    loglane_applied         service, topic, partition, position, event_ids (TEXT[]: the ids a
                            batch applied, kept a while to drop duplicates)
    loglane_requests        service, request_id, status, event_ids (JSON text), detail
    loglane_schema_version  version, description, applied_at: the migrations applied

Loglane creates and migrates its own tables when it first touches a schema, under an advisory
lock, so any number of workers may start at once and an upgrade needs no SQL by hand.

A handler's own statements (`tx.execute`, `%s` parameters) run in the commit after the view
writes, with the service's schema first on the search path, so they name its tables unqualified.

Each commit notifies the channel `loglane_<service>` (see `CommitListener`), so an HTTP API
waiting for a request or a position is pushed, not polling.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool
from pydantic_core import to_jsonable_python

from loglane.errors import BackendUnavailableError, BadURLError, ConfigurationError, StaleBatchError
from loglane.records import Message, TopicPartition, decode_headers, encode_headers
from loglane.stores.base import (
    Batch,
    OutboxEntry,
    RequestOutcome,
    RequestStatus,
    Row,
    Store,
)
from loglane.views import Key, View

Connection = psycopg.Connection[tuple[Any, ...]]
Cursor = psycopg.Cursor[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of Loglane's own tables; statements run with the schema on the search path."""

    version: int
    description: str
    statements: tuple[str, ...]


# Append only: a released migration never changes, a new one gets the next version.
MIGRATIONS = (
    Migration(
        1,
        "positions, outbox, applied event ids and requests",
        (
            """CREATE TABLE loglane_positions (
                service TEXT NOT NULL,
                topic TEXT NOT NULL,
                partition INTEGER NOT NULL,
                "offset" BIGINT NOT NULL,
                PRIMARY KEY (service, topic, partition)
            )""",
            """CREATE TABLE loglane_outbox (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                service TEXT NOT NULL,
                source_topic TEXT NOT NULL,
                source_partition INTEGER NOT NULL,
                topic TEXT NOT NULL,
                key BYTEA,
                value BYTEA NOT NULL,
                headers BYTEA NOT NULL
            )""",
            """CREATE INDEX loglane_outbox_by_source
                ON loglane_outbox (service, source_topic, source_partition, seq)""",
            """CREATE TABLE loglane_applied (
                service TEXT NOT NULL,
                topic TEXT NOT NULL,
                partition INTEGER NOT NULL,
                position BIGINT NOT NULL,
                event_ids TEXT[] NOT NULL,
                PRIMARY KEY (service, topic, partition, position)
            )""",
            """CREATE TABLE loglane_requests (
                service TEXT NOT NULL,
                request_id TEXT NOT NULL,
                status TEXT NOT NULL,
                event_ids TEXT NOT NULL,
                detail TEXT,
                PRIMARY KEY (service, request_id)
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_SQL_TYPES = {str: 'TEXT COLLATE "C"', int: "BIGINT", float: "DOUBLE PRECISION", bool: "BOOLEAN"}
_CASTS = {str: "", int: "::bigint", float: "::double precision", bool: "::boolean"}
_OUTBOX_COLUMNS = (
    "service",
    "source_topic",
    "source_partition",
    "topic",
    "key",
    "value",
    "headers",
)
# A view whose worker has not created its table (or schema) yet reads as empty.
_NOT_YET_CREATED = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)
# NOTIFY payloads must stay under 8000 bytes; past this, request ids are left out.
_NOTIFY_BYTES = 7000


def quote(name: str) -> str:
    """`name` as a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def channel(service: str) -> str:
    """The NOTIFY channel of `service`'s commits."""
    return f"loglane_{service}"


class PostgresStore(Store):
    """A store in the PostgreSQL database `conninfo` names (a URL or libpq key=value string).

    Missing connection parameters come from the usual PG* environment variables. `schema`
    names each service's schema; `{service}` in it stands for the service name. The pool
    holds up to `pool_size` connections. An operation in flight when the server goes away
    raises `BackendUnavailableError` at once; while it is away, an operation waits up to
    `pool_timeout` seconds for a new connection before it raises. A table's rows in a batch
    of at least `copy_threshold` go through COPY; fewer are sent with `executemany` in the
    commit's pipeline (below about 50 rows, that is faster).
    """

    def __init__(
        self,
        conninfo: str = "",
        *,
        schema: str = "{service}",
        pool_size: int = 4,
        pool_timeout: float = 10.0,
        copy_threshold: int = 64,
    ) -> None:
        if not schema.replace("{service}", "x"):
            raise ConfigurationError("schema must not be empty")
        self.schema_template = schema
        self.copy_threshold = copy_threshold
        self._where = describe(conninfo)
        given = conninfo_to_dict(conninfo)
        defaults: dict[str, str | int] = {"connect_timeout": 10, "application_name": "loglane"}
        self._conninfo = make_conninfo(
            conninfo, **{name: value for name, value in defaults.items() if name not in given}
        )
        self._lock = threading.Lock()
        self._schemas: set[str] = set()
        self._tables: dict[View[Any], _ViewTable] = {}
        self._stages: dict[tuple[str, tuple[str, ...]], str] = {}
        self._staged: weakref.WeakKeyDictionary[Connection, set[str]] = weakref.WeakKeyDictionary()
        try:
            psycopg.connect(self._conninfo).close()
        except psycopg.OperationalError as exc:
            raise BackendUnavailableError(
                f"cannot connect to PostgreSQL ({self._where}): {_one_line(exc)}; start the "
                "server (scripts/postgres start) or fix --db / LOGLANE_DB"
            ) from None
        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=pool_size,
            timeout=pool_timeout,
            kwargs={"autocommit": True},
            name=f"loglane {self._where}",
            open=False,
        )
        self._pool.open(wait=False)

    # -- connections ----------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A pooled autocommit connection; losing the server becomes BackendUnavailableError."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            # Drop the pool's other connections to the old server now, not one failure each.
            self._pool.check()
            raise BackendUnavailableError(
                f"PostgreSQL ({self._where}) is unavailable: {_one_line(exc)}"
            ) from exc

    def schema(self, service: str) -> str:
        """The schema holding `service`'s tables, created and migrated on first use."""
        name = self.schema_template.replace("{service}", service)
        if name not in self._schemas:
            with self._connection() as conn:
                try:
                    _migrate(conn, name)
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise ConfigurationError(
                        f"cannot create Loglane's tables in schema {name!r} on {self._where}: "
                        f"{_one_line(exc)}; grant CREATE on the database (or create the schema "
                        "and grant CREATE on it) to the user in --db"
                    ) from None
            with self._lock:
                self._schemas.add(name)
        return name

    def prepare(self, service: str, views: Sequence[View[Any]]) -> None:
        schema = self.schema(service)
        with self._connection() as conn:
            for view in views:
                self._tables[view] = _ViewTable.create(conn, schema, view)

    def _view_table(self, view: View[Any]) -> _ViewTable:
        """The statements of `view`; a view no worker prepared yet reads as empty."""
        table = self._tables.get(view)
        if table is None:
            name = self.schema_template.replace("{service}", view.service)
            table = self._tables[view] = _ViewTable(name, view)
        return table

    # -- reads ----------------------------------------------------------------------------------

    def positions(self, service: str) -> dict[TopicPartition, int]:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            rows = conn.execute(
                f'SELECT topic, partition, "offset" FROM {schema}.loglane_positions '
                "WHERE service = %s",
                (service,),
            ).fetchall()
        return {TopicPartition(topic, partition): offset for topic, partition, offset in rows}

    def get(self, view: View[Row], key: Key) -> Row | None:
        table = self._view_table(view)
        with self._connection() as conn, suppress(*_NOT_YET_CREATED):
            row = conn.execute(table.select_one, (table.key_param(key),)).fetchone()
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
        table = self._view_table(view)
        where = dict(where or {})
        unknown = set(where) - {view.key, *view.indexes}
        if unknown:
            raise ConfigurationError(
                f"view {view.name!r} cannot filter on {', '.join(sorted(unknown))}; "
                f"indexed fields: {', '.join((view.key, *view.indexes))}"
            )
        clauses = [f"{quote(name)} = %s" for name in where]
        params = [table.param(name, value) for name, value in where.items()]
        if after is not None:
            clauses.append(f"{quote(view.key)} > %s")
            params.append(table.key_param(after))
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connection() as conn, suppress(*_NOT_YET_CREATED):
            rows = conn.execute(
                f"SELECT doc::text FROM {table.name} {condition} "
                f"ORDER BY {quote(view.key)} LIMIT %s",
                (*params, limit),
            ).fetchall()
            return [view.load(doc) for (doc,) in rows]
        return []

    def applied(
        self, service: str, source: TopicPartition, since: int
    ) -> list[tuple[int, list[str]]]:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT position, event_ids FROM {schema}.loglane_applied WHERE service = %s "
                "AND topic = %s AND partition = %s AND position > %s ORDER BY position",
                (service, source.topic, source.partition, since),
            ).fetchall()
        return [(position, list(event_ids)) for position, event_ids in rows]

    def outbox(
        self, service: str, sources: Collection[TopicPartition], limit: int
    ) -> list[OutboxEntry]:
        schema = quote(self.schema(service))
        entries: list[OutboxEntry] = []
        with self._connection() as conn:
            for source in sorted(sources):
                rows = conn.execute(
                    f"SELECT seq, topic, key, value, headers FROM {schema}.loglane_outbox "
                    "WHERE service = %s AND source_topic = %s AND source_partition = %s "
                    "ORDER BY seq LIMIT %s",
                    (service, source.topic, source.partition, limit - len(entries)),
                ).fetchall()
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

    def outbox_backlog(self, service: str) -> dict[TopicPartition, int]:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT source_topic, source_partition, count(*) FROM {schema}.loglane_outbox "
                "WHERE service = %s GROUP BY source_topic, source_partition",
                (service,),
            ).fetchall()
        return {TopicPartition(topic, partition): n for topic, partition, n in rows}

    def request(self, service: str, request_id: str) -> RequestOutcome | None:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT status, event_ids, detail FROM {schema}.loglane_requests "
                "WHERE service = %s AND request_id = %s",
                (service, request_id),
            ).fetchone()
        if row is None:
            return None
        status, event_ids, detail = row
        return RequestOutcome(
            request_id=request_id,
            status=RequestStatus(status),
            event_ids=tuple(json.loads(event_ids)),
            detail=detail,
        )

    # -- writes ---------------------------------------------------------------------------------

    def commit(self, batch: Batch) -> int | None:
        schema = self.schema(batch.service)
        unprepared = [view for view in batch.writes if view not in self._tables]
        if unprepared:
            self.prepare(batch.service, unprepared)
        tables = {view: self._tables[view] for view in batch.writes}
        created: list[str] = []
        with self._connection() as conn:
            with conn.transaction():
                last_seq = self._write(conn, schema, tables, batch, created)
            self._staged.setdefault(conn, set()).update(created)
        return last_seq

    def _write(
        self,
        conn: Connection,
        schema_name: str,
        tables: Mapping[View[Any], _ViewTable],
        batch: Batch,
        created: list[str],
    ) -> int | None:
        """The body of `commit`'s transaction, in the order the statements run."""
        schema = quote(schema_name)
        source = (batch.service, batch.source.topic, batch.source.partition)
        writer = _BatchWriter(conn, self.copy_threshold, partial(self._stage, conn, created))
        _advance_position(writer.cursor, schema, batch)
        for view, rows in batch.writes.items():
            table = tables[view]
            upserts = [table.values(key, row) for key, row in rows.items() if row is not None]
            writer.insert(table.name, table.columns, upserts, table.on_conflict)
            deletes = [table.key_param(key) for key, row in rows.items() if row is None]
            if deletes:
                writer.execute(table.delete, (deletes,))
        outbox = [
            (*source, m.topic, m.key, m.value, encode_headers(m.headers)) for m in batch.outbox
        ]
        writer.insert(f"{schema}.loglane_outbox", _OUTBOX_COLUMNS, outbox)
        if batch.applied_ids:
            writer.execute(
                f"INSERT INTO {schema}.loglane_applied VALUES (%s, %s, %s, %s, %s)",
                (*source, batch.position, batch.applied_ids),
            )
        if batch.forget_applied_before is not None:
            writer.execute(
                f"DELETE FROM {schema}.loglane_applied WHERE service = %s AND topic = %s "
                "AND partition = %s AND position < %s",
                (*source, batch.forget_applied_before),
            )
        # Commands of one batch sharing a request id: the last outcome wins, as row by row.
        outcomes = {outcome.request_id: outcome for outcome in batch.requests}
        writer.insert(
            f"{schema}.loglane_requests",
            ("service", "request_id", "status", "event_ids", "detail"),
            [
                (batch.service, o.request_id, o.status.value, json.dumps(o.event_ids), o.detail)
                for o in outcomes.values()
            ],
            "ON CONFLICT (service, request_id) DO UPDATE SET status = excluded.status, "
            "event_ids = excluded.event_ids, detail = excluded.detail",
        )
        if batch.published_upto is not None:
            writer.execute(
                f"DELETE FROM {schema}.loglane_outbox WHERE service = %s "
                "AND source_topic = %s AND source_partition = %s AND seq <= %s",
                (*source, batch.published_upto),
            )
        if batch.statements:
            writer.execute(f"SET LOCAL search_path TO {schema}, public")
        for statement in batch.statements:
            writer.execute(statement.sql, statement.params)
        writer.execute(
            "SELECT pg_notify(%s, %s)",
            (channel(batch.service), _notice(schema_name, batch, list(outcomes))),
        )
        last_seq = writer.flush(
            f"SELECT currval(pg_get_serial_sequence('{schema}.loglane_outbox', 'seq'))"
            if outbox
            else None
        )
        return None if last_seq is None else int(last_seq)

    def _stage(
        self, conn: Connection, created: list[str], target: str, columns: tuple[str, ...]
    ) -> str:
        """A temporary table shaped like `columns` of `target`, emptied at every commit."""
        with self._lock:
            stage = self._stages.setdefault(
                (target, columns), f"loglane_stage_{len(self._stages) + 1}"
            )
        if stage not in self._staged.get(conn, ()) and stage not in created:
            conn.execute(
                f"CREATE TEMPORARY TABLE {stage} ON COMMIT DELETE ROWS AS "
                f"SELECT {', '.join(columns)} FROM {target} WITH NO DATA"
            )
            created.append(stage)
        return f"pg_temp.{stage}"

    def delete_outbox(self, service: str, published: Mapping[TopicPartition, int]) -> None:
        if not published:
            return
        schema = quote(self.schema(service))
        with self._connection() as conn, conn.transaction():
            conn.cursor().executemany(
                f"DELETE FROM {schema}.loglane_outbox WHERE service = %s AND source_topic = %s "
                "AND source_partition = %s AND seq <= %s",
                [(service, tp.topic, tp.partition, seq) for tp, seq in published.items()],
            )

    # -- push -----------------------------------------------------------------------------------

    def listen(self, *services: str) -> CommitListener:
        """A listener for the commits of `services` in this store's schemas."""
        schemas = {self.schema_template.replace("{service}", s) for s in services}
        return CommitListener(self._conninfo, services, schemas, where=self._where)

    def close(self) -> None:
        self._pool.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitNotice:
    """A batch of `service` committed: `topic`/`partition` now stand at `position`.

    `request_ids` are the requests whose outcome the batch stored, or None when there were
    too many to say: then any pending request of the service may have finished.
    """

    service: str
    topic: str
    partition: int
    position: int
    request_ids: tuple[str, ...] | None


class CommitListener:
    """Commits of some services, pushed by PostgreSQL (LISTEN/NOTIFY) on a connection of its own.

        with store.listen("customers") as listener:
            while not done():
                for notice in listener.wait(timeout=1.0):
                    ...   # re-read the request or the position the notice names

    Notices sent while no listener was connected are lost: check the state you wait for once
    after listening starts, then after each notice. When the connection drops, `wait` raises
    `BackendUnavailableError`; open a new listener and check again.
    """

    def __init__(
        self,
        conninfo: str,
        services: Collection[str],
        schemas: Collection[str],
        *,
        where: str,
    ) -> None:
        self._schemas = set(schemas)
        self._where = where
        try:
            self._conn = psycopg.connect(conninfo, autocommit=True)
            for service in services:
                self._conn.execute(f"LISTEN {quote(channel(service))}")
        except psycopg.OperationalError as exc:
            raise BackendUnavailableError(
                f"cannot listen on PostgreSQL ({where}): {_one_line(exc)}"
            ) from exc

    def wait(self, timeout: float) -> list[CommitNotice]:
        """The notices that arrive within `timeout` seconds, returned as soon as there is one."""
        notices: list[CommitNotice] = []
        try:
            for notify in self._conn.notifies(timeout=timeout, stop_after=1):
                notices.extend(self._read(notify))
            # Take the rest that arrived with the first, without waiting again.
            for notify in self._conn.notifies(timeout=0):
                notices.extend(self._read(notify))
        except psycopg.OperationalError as exc:
            raise BackendUnavailableError(
                f"lost the PostgreSQL listener ({self._where}): {_one_line(exc)}"
            ) from exc
        return notices

    def _read(self, notify: psycopg.Notify) -> list[CommitNotice]:
        payload = json.loads(notify.payload)
        if payload["schema"] not in self._schemas:
            return []
        request_ids = payload["request_ids"]
        return [
            CommitNotice(
                service=notify.channel.removeprefix("loglane_"),
                topic=payload["topic"],
                partition=payload["partition"],
                position=payload["position"],
                request_ids=None if request_ids is None else tuple(request_ids),
            )
        ]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> CommitListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _BatchWriter:
    """The statements of one commit: large row sets are copied at once (COPY cannot run in a
    pipeline) into staging tables, everything else waits to be sent in one pipeline."""

    def __init__(
        self,
        conn: Connection,
        copy_threshold: int,
        stage: Callable[[str, tuple[str, ...]], str],
    ) -> None:
        self.cursor = conn.cursor()
        self._conn = conn
        self._copy_threshold = copy_threshold
        self._stage = stage
        self._queued: list[tuple[str, Any]] = []

    def insert(
        self,
        target: str,
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        on_conflict: str | None = None,
    ) -> None:
        """Insert `rows`; without `on_conflict` large sets are copied straight into `target`."""
        if not rows:
            return
        insert = f"INSERT INTO {target} ({', '.join(columns)})"
        if len(rows) < self._copy_threshold:
            values = f"VALUES ({', '.join(['%s'] * len(columns))})"
            self._queued.append((f"{insert} {values} {on_conflict or ''}", rows))
        elif on_conflict is None:
            _copy(self.cursor, target, columns, rows)
        else:
            stage = self._stage(target, columns)
            _copy(self.cursor, stage, columns, rows)
            self.execute(f"{insert} SELECT * FROM {stage} {on_conflict}")

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        self._queued.append((sql, params))

    def flush(self, query: str | None) -> Any:
        """Send what is queued in one pipeline, then `query`; return its single value."""
        with self._conn.pipeline():
            for sql, params in self._queued:
                if isinstance(params, list):
                    self.cursor.executemany(sql, params)
                else:
                    self.cursor.execute(sql, params)
            if query is not None:
                self.cursor.execute(query)
        if query is None:
            return None
        row = self.cursor.fetchone()
        return None if row is None else row[0]


class _ViewTable:
    """The statements of one view's table in one schema, built once from its declaration."""

    def __init__(self, schema: str, view: View[Any]) -> None:
        self.view = view
        self.name = f"{quote(schema)}.{quote(view.name)}"
        self.columns = (
            quote(view.key),
            "doc",
            *(quote(column.name) for column in view.columns),
        )
        self._kinds = {column.name: column.kind for column in view.columns}
        self._kinds[view.key] = view.key_kind
        self._column_names = tuple(column.name for column in view.columns)
        self._text_columns = tuple(i for i, column in enumerate(view.columns) if column.kind is str)
        updates = ", ".join(f"{name} = excluded.{name}" for name in self.columns[1:])
        self.on_conflict = f"ON CONFLICT ({quote(view.key)}) DO UPDATE SET {updates}"
        self.delete = f"DELETE FROM {self.name} WHERE {quote(view.key)} = ANY(%s)"
        self.select_one = f"SELECT doc::text FROM {self.name} WHERE {quote(view.key)} = %s"

    def key_param(self, key: Any) -> Any:
        return _as_text(key) if self.view.key_kind is str else key

    def param(self, name: str, value: Any) -> Any:
        """`value` as the column `name` holds it: fields that are not plain str, int, float
        or bool are kept as their JSON text."""
        return _as_text(value) if self._kinds[name] is str else value

    def values(self, key: Key, row: Any) -> tuple[Any, ...]:
        """The row as the table's columns: the key, the document, the indexed fields."""
        if key.__class__ is not self.view.key_kind:
            key = self.key_param(key)
        document = self.view.document(row).decode()
        if not self._column_names:
            return (key, document)
        columns = [getattr(row, name) for name in self._column_names]
        for i in self._text_columns:
            if columns[i].__class__ is not str:
                columns[i] = _as_text(columns[i])
        return (key, document, *columns)

    @classmethod
    def create(cls, conn: Connection, schema: str, view: View[Any]) -> _ViewTable:
        """Create the table and its indexes; add columns for indexes declared since."""
        if "doc" in (view.key, *view.indexes):
            raise ConfigurationError(
                f"view {view.name!r}: 'doc' is the column holding the row; rename that field"
            )
        table = cls(schema, view)
        with conn.transaction():
            _lock_schema(conn, schema)
            existing = {
                name
                for (name,) in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                    "AND attnum > 0 AND NOT attisdropped",
                    (table.name,),
                )
            }
            if not existing:
                conn.execute(
                    f"CREATE TABLE {table.name} ({quote(view.key)} {_SQL_TYPES[view.key_kind]} "
                    "PRIMARY KEY, doc JSONB NOT NULL)"
                )
            indexes = {
                name
                for (name,) in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
                    (schema, view.name),
                )
            }
            for column in view.columns:
                if column.name not in existing:
                    conn.execute(
                        f"ALTER TABLE {table.name} ADD COLUMN {quote(column.name)} "
                        f"{_SQL_TYPES[column.kind]}"
                    )
                    conn.execute(
                        f"UPDATE {table.name} SET {quote(column.name)} = "
                        f"(doc ->> %s){_CASTS[column.kind]}",
                        (column.name,),
                    )
                index = f"{view.name}_by_{column.name}"
                if index not in indexes:
                    conn.execute(
                        f"CREATE INDEX IF NOT EXISTS {quote(index)} "
                        f"ON {table.name} ({quote(column.name)}, {quote(view.key)})"
                    )
        return table


def _migrate(conn: Connection, schema: str) -> None:
    """Create `schema` and bring Loglane's tables in it to `SCHEMA_VERSION`."""
    with conn.transaction():
        _lock_schema(conn, schema)
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if found.fetchone() is None:
            conn.execute(f"CREATE SCHEMA {quote(schema)}")
        conn.execute(f"SET LOCAL search_path TO {quote(schema)}")
        found = conn.execute("SELECT to_regclass('loglane_schema_version')")
        if found.fetchone() == (None,):
            conn.execute(
                "CREATE TABLE loglane_schema_version (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
        (current,) = conn.execute(
            "SELECT coalesce(max(version), 0) FROM loglane_schema_version"
        ).fetchone() or (0,)
        if current > SCHEMA_VERSION:
            raise ConfigurationError(
                f"schema {schema!r} is at version {current}, written by a newer Loglane than "
                f"this one (version {SCHEMA_VERSION}); upgrade Loglane"
            )
        for migration in MIGRATIONS[current:]:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO loglane_schema_version (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )


def _lock_schema(conn: Connection, schema: str) -> None:
    """Serialize DDL on `schema` across processes, until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"loglane schema {schema}",))


def _advance_position(cursor: Cursor, schema: str, batch: Batch) -> None:
    """Move the batch's position, only from where the batch began: the fence.

    The UPDATE locks the position row, so a zombie and the partition's new owner committing
    at once are serialized, and the second finds the position moved.
    """
    source = batch.source
    if batch.expected_position is None:
        cursor.execute(
            f"INSERT INTO {schema}.loglane_positions VALUES (%s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (batch.service, source.topic, source.partition, batch.position),
        )
    else:
        cursor.execute(
            f'UPDATE {schema}.loglane_positions SET "offset" = %s WHERE service = %s '
            'AND topic = %s AND partition = %s AND "offset" = %s',
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


def _notice(schema: str, batch: Batch, request_ids: list[str]) -> str:
    """The NOTIFY payload of a commit, as JSON; request ids only while they fit."""
    notice: dict[str, Any] = {
        "schema": schema,
        "topic": batch.source.topic,
        "partition": batch.source.partition,
        "position": batch.position,
        "request_ids": request_ids,
    }
    payload = json.dumps(notice)
    if len(payload.encode()) > _NOTIFY_BYTES:
        notice["request_ids"] = None
        payload = json.dumps(notice)
    return payload


def _copy(
    cursor: Cursor, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _as_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    plain = to_jsonable_python(value)
    return plain if isinstance(plain, str) else json.dumps(plain)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def describe(conninfo: str) -> str:
    """`user@host:port/dbname` for messages, from `conninfo` and the PG* variables, no password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise BadURLError(
            f"not a PostgreSQL URL: {_one_line(exc)}; Loglane's own options are schema, "
            "pool_size and pool_timeout, the rest must be libpq parameters"
        ) from None

    def value(name: str, variable: str, default: str) -> str:
        return str(params.get(name) or os.environ.get(variable) or default)

    user = value("user", "PGUSER", "")
    host = value("host", "PGHOST", "localhost")
    port = value("port", "PGPORT", "5432")
    dbname = value("dbname", "PGDATABASE", user or "postgres")
    return f"{user + '@' if user else ''}{host}:{port}/{dbname}"
