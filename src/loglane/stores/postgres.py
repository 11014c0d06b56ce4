"""The PostgreSQL store: views and Loglane's bookkeeping in one schema per service.

By default each service gets the schema named after it (`schema="{service}"`); a fixed name
puts every service in one schema, told apart by the `service` columns. Tables users may query
with their own SQL, named as in the SQLite store:

    <view>                  one per view: the key field, `doc` (the row as JSONB), and one
                            column per indexed field, each named after its field, each with
                            a btree index `<view>_by_<field>`
    loglane_positions       service, topic, partition, "offset" (next offset to read),
                            origins (MessagePack: the origin watermarks, see loglane.dedupe),
                            published (the seq of the last outcome row published from it)
    loglane_outcomes        seq, service, source_topic, source_partition, then for a
                            command: request_source, request_id, status, detail, event_ids
                            (JSON text); messages (MessagePack: [topic, key, value, headers]
                            per message to publish: a command's events, or one other
                            message), handled_at. Rows past their source's `published` are
                            the outbox; published rows are pruned after `ledger_retention`
    loglane_applied         service, topic, partition, position, event_ids (TEXT[]: the ids a
                            batch applied, kept a while to drop duplicates)
    loglane_accepted        service, request_id, fingerprint, topic, partition, "offset",
                            accepted_at: the HTTP API's command ledger
    loglane_schema_version  version, description, applied_at: the migrations applied
    loglane_migrations      service, name, applied_at: the service's own migrations run
                            (see loglane.migrations), created with the first

Loglane creates and migrates its own tables when it first touches a schema, under an advisory
lock, so any number of workers may start at once and an upgrade needs no SQL by hand. Their
names and ids (services, topics, request ids, keys) are `TEXT COLLATE "C"`: looked up by
equality only, they compare bytewise whatever the database's collation.

A batch's handlers run inside its transaction. A view read takes a transaction-scoped
advisory lock on the row's key first, so two batches (of different partitions, or workers)
that read and write one row are serialized and neither loses the other's update; a deadlock
between two such batches rolls one back, and the worker runs it again.

A handler's own statements (`tx.execute`, `%s` or `%(name)s` parameters) run in the commit
after the view writes, with the service's schema first on the search path, so they name its
tables unqualified; so do the service's own migrations (`Service.migration`).

Each commit notifies the channel `loglane_<service>`: `listen` gives a `CommitListener`, and
`change_marker` moves with those notices, so the HTTP API's waits are pushed, not polled.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from loglane.envelope import COMMAND_SOURCE
from loglane.errors import (
    BackendUnavailableError,
    BadURLError,
    BatchConflictError,
    BatchRejectedError,
    ConfigurationError,
    LoglaneError,
)
from loglane.migrations import Migration
from loglane.records import (
    TopicPartition,
)
from loglane.stores import _postgres_arrays as arrays
from loglane.stores._batch import (
    OUTCOME_READ,
    PruneClock,
    backlog_sql,
    forget_published,
    outbox_seqs,
    outcome_of,
    read_outbox,
    unpublished_sql,
    write_batch,
)
from loglane.stores._postgres_batch import (
    PostgresRows,
    SentCommit,
    check_keys,
    lost_a_race,
    one_line,
    roll_back_if_open,
    row_lock,
    storable,
    write_errors,
)
from loglane.stores._postgres_notify import (
    ChangeMarker,
    CommitListener,
    CommitNotice,
)
from loglane.stores._postgres_tables import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ViewTable,
    lock_schema,
    migrate,
    quote,
    run_migrations,
)
from loglane.stores.base import (
    AcceptedCommand,
    Batch,
    OutboxEntry,
    PendingCommit,
    RequestOutcome,
    Row,
    Store,
    StoreTransaction,
    ViewSwap,
    Watermarks,
    accepted_command,
    decode_watermarks,
    stale_batch,
)
from loglane.views import Document, Key, OutdatedDocument, View

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "CommitListener",
    "CommitNotice",
    "PostgresStore",
]

Connection = psycopg.Connection[tuple[Any, ...]]

# A view whose worker has not created its table (or schema) yet reads as empty.
_NOT_YET_CREATED = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)
_PRUNE_LEDGER_EVERY = 256


class PostgresStore(Store):
    """A store in the PostgreSQL database `conninfo` names (a URL or libpq key=value string).

    Missing connection parameters come from the usual PG* environment variables. `schema`
    names each service's schema; `{service}` in it stands for the service name. The pool
    holds up to `pool_size` connections. An operation in flight when the server goes away
    raises `BackendUnavailableError` at once; while it is away, an operation waits up to
    `pool_timeout` seconds for a new connection before it raises. `ledger_retention` is how
    many seconds the HTTP API's command ledger remembers a request id.
    """

    def __init__(
        self,
        conninfo: str = "",
        *,
        schema: str = "{service}",
        pool_size: int = 4,
        pool_timeout: float = 10.0,
        ledger_retention: float = 86_400.0,
    ) -> None:
        if not schema.replace("{service}", "x"):
            raise ConfigurationError("schema must not be empty")
        self.schema_template = schema
        self.ledger_retention = ledger_retention
        self._ledger_writes = 0
        self._prune_clock = PruneClock()
        self._marker: ChangeMarker | None = None
        self._services: set[str] = set()
        self._where = describe(conninfo)
        given = conninfo_to_dict(conninfo)
        # A worker holds its batch's transaction while its handlers run; if its process stalls
        # there (SIGSTOP, a frozen VM), the server ends the session after a minute, so the
        # locks it holds do not stop the partition's next owner for good.
        defaults: dict[str, str | int] = {
            "connect_timeout": 10,
            "application_name": "loglane",
            "options": "-c idle_in_transaction_session_timeout=60000",
        }
        self._conninfo = make_conninfo(
            conninfo, **{name: value for name, value in defaults.items() if name not in given}
        )
        self._lock = threading.Lock()
        self._schemas: set[str] = set()
        self._tables: dict[View[Any], ViewTable] = {}  # created by prepare
        self._unprepared: dict[View[Any], ViewTable] = {}  # read before any prepare
        try:
            psycopg.connect(self._conninfo).close()
        except psycopg.OperationalError as exc:
            raise BackendUnavailableError(
                f"cannot connect to PostgreSQL ({self._where}): {one_line(exc)}; start the "
                "server (scripts/postgres start) or fix --db / LOGLANE_DB"
            ) from None
        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=pool_size,
            timeout=pool_timeout,
            kwargs={"autocommit": True},
            configure=lambda conn: arrays.register(conn.adapters),
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
                f"PostgreSQL ({self._where}) is unavailable: {one_line(exc)}"
            ) from exc

    def schema(self, service: str) -> str:
        """The schema holding `service`'s tables, created and migrated on first use."""
        name = self._schema_name(service)
        if service in self._services:
            return name
        if name not in self._schemas:
            with self._connection() as conn:
                try:
                    migrate(conn, name)
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise ConfigurationError(
                        f"cannot create Loglane's tables in schema {name!r} on {self._where}: "
                        f"{one_line(exc)}; grant CREATE on the database (or create the schema "
                        "and grant CREATE on it) to the user in --db"
                    ) from None
        with self._lock:
            self._schemas.add(name)
            self._services = self._services | {service}
        return name

    def _schema_name(self, service: str) -> str:
        return self.schema_template.replace("{service}", service)

    def prepare(
        self, service: str, views: Sequence[View[Any]], migrations: Sequence[Migration] = ()
    ) -> None:
        schema = self.schema(service)
        with self._connection() as conn:
            for view in views:
                self._tables[view] = ViewTable.create(conn, schema, view)
            if migrations:
                run_migrations(conn, schema, service, migrations)

    def _view_table(self, view: View[Any]) -> ViewTable:
        """The statements of `view`; a view no worker prepared yet reads as empty."""
        table = self._tables.get(view) or self._unprepared.get(view)
        if table is None:  # its table may not exist yet, or be older than versions
            schema = self._schema_name(view.service)
            with self._connection() as conn:
                (columns,) = conn.execute(
                    "SELECT array_agg(attname::text) FROM pg_attribute "
                    "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                    (f"{quote(schema)}.{quote(view.name)}",),
                ).fetchone() or (None,)
            table = ViewTable(schema, view, versioned=not columns or "doc_version" in columns)
            if columns:  # a table not created yet is created with versions
                self._unprepared[view] = table
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

    def watermarks(self, service: str, source: TopicPartition) -> Watermarks:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT origins FROM {schema}.loglane_positions "
                "WHERE service = %s AND topic = %s AND partition = %s",
                (service, source.topic, source.partition),
            ).fetchone()
        return decode_watermarks(None if row is None else row[0])

    def parked(self, service: str, source: TopicPartition) -> dict[str, str]:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT key, head FROM {schema}.loglane_parked_keys "
                "WHERE service = %s AND topic = %s AND partition = %s",
                (service, source.topic, source.partition),
            ).fetchall()
        return dict(rows)

    def get(self, view: View[Row], key: Key) -> Row | None:
        table = self._view_table(view)
        with self._connection() as conn, suppress(*_NOT_YET_CREATED):
            row = conn.execute(table.select_one, (table.key_param(key),)).fetchone()
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
        table = self._view_table(view)
        where = dict(where or {})
        view.check_filters(where)
        condition, params = table.condition(where)
        if after is not None:
            condition += f"{' AND' if condition else 'WHERE'} {quote(view.key)} > %s"
            params.append(table.key_param(after))
        with self._connection() as conn, suppress(*_NOT_YET_CREATED):
            rows = conn.execute(
                f"{table.select_rows} {condition} ORDER BY {quote(view.key)} LIMIT %s",
                (*params, limit),
            ).fetchall()
            return [view.load(view.stored(doc, version), key) for key, doc, version in rows]
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
        select = unpublished_sql(f"{schema}.loglane_positions", f"{schema}.loglane_outcomes")
        with self._connection() as conn:
            return read_outbox(
                lambda params: conn.execute(select, params).fetchall(), service, sources, limit
            )

    def outbox_backlog(self, service: str) -> dict[TopicPartition, int]:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            rows = conn.execute(
                backlog_sql(f"{schema}.loglane_positions", f"{schema}.loglane_outcomes"),
                (service,),
            ).fetchall()
        return {TopicPartition(topic, partition): n for topic, partition, n in rows if n}

    def requests(
        self, service: str, request_ids: Collection[str], *, source: str = COMMAND_SOURCE
    ) -> dict[str, RequestOutcome]:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            rows = conn.execute(  # the latest outcome of a request id reused wins
                f"SELECT {OUTCOME_READ} FROM {schema}.loglane_outcomes WHERE service = %s "
                "AND request_source = %s AND request_id = ANY(%s) ORDER BY seq",
                (service, source, list(request_ids)),
            ).fetchall()
        return {row[0]: outcome_of(source, row) for row in rows}

    # -- writes ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(
        self, service: str, fences: Mapping[TopicPartition, int | None]
    ) -> Iterator[StoreTransaction]:
        schema = self.schema(service)
        sources = sorted(fences)  # rows locked in one order: two workers cannot deadlock
        with ExitStack() as stack:
            conn = stack.enter_context(self._connection())
            stack.callback(roll_back_if_open, conn)  # before it goes back to the pool
            try:
                conn.execute("BEGIN")
                # The position rows stay locked until the commit: a zombie and a partition's
                # new owner are serialized, and the second sees it moved.
                stored = {
                    TopicPartition(topic, partition): offset
                    for topic, partition, offset in conn.execute(
                        f'SELECT topic, partition, "offset" FROM {quote(schema)}.'
                        "loglane_positions WHERE service = %s AND (topic, partition) IN "
                        "(SELECT * FROM unnest(%s::text[], %s::int[])) "
                        "ORDER BY topic, partition FOR UPDATE",
                        (
                            service,
                            [source.topic for source in sources],
                            [source.partition for source in sources],
                        ),
                    )
                }
                for source in sources:
                    if stored.get(source) != fences[source]:
                        raise stale_batch(service, source, fences[source])
                transaction = _PostgresTransaction(self, conn, schema, stack)
                yield transaction
                if not transaction.sent:
                    conn.execute("COMMIT")
            except psycopg.OperationalError as exc:
                if lost_a_race(exc):  # raised in the transaction's reads or its write
                    raise BatchConflictError(one_line(exc)) from exc
                raise

    def delete_outbox(self, service: str, published: Mapping[TopicPartition, int]) -> None:
        if not published:
            return
        schema = quote(self.schema(service))
        statements = forget_published(
            f"{schema}.loglane_positions", f"{schema}.loglane_outcomes", service, published
        )
        with self._connection() as conn, conn.transaction():
            for sql, rows in statements:
                conn.cursor().executemany(sql, rows)

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
        schema = quote(self.schema(service))
        now = time.time() if accepted_at is None else accepted_at
        with self._connection() as conn:
            # Concurrent claims of one id: the insert lets one win; a claim of the same
            # command left unappended for `stale_after` is taken over by the update's
            # condition, which also gives the new owner a token (accepted_at) of its own.
            while True:
                taken = conn.execute(
                    f"INSERT INTO {schema}.loglane_accepted AS a "
                    "(service, request_id, fingerprint, accepted_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (service, request_id) DO UPDATE SET accepted_at = "
                    "excluded.accepted_at WHERE a.topic IS NULL AND a.fingerprint = "
                    "excluded.fingerprint AND a.accepted_at < %s "
                    "AND a.accepted_at <> excluded.accepted_at RETURNING 1",
                    (service, request_id, fingerprint, now, now - stale_after),
                ).fetchone()
                if taken is not None:
                    return None
                row = conn.execute(
                    f'SELECT fingerprint, topic, partition, "offset", accepted_at '
                    f"FROM {schema}.loglane_accepted WHERE service = %s AND request_id = %s",
                    (service, request_id),
                ).fetchone()
                if row is not None:
                    return accepted_command(request_id, *row)
                # released between the two statements: claim again

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
        schema = quote(self.schema(service))
        with self._connection() as conn, conn.transaction():
            # A claim is replaced only by its owner: the command with its accepted_at. The
            # entries of other owners stay locked until commit, so they are read back as is.
            conn.cursor().executemany(
                f"INSERT INTO {schema}.loglane_accepted AS a "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (service, request_id) DO UPDATE SET topic = excluded.topic, "
                'partition = excluded.partition, "offset" = excluded."offset" '
                "WHERE a.topic IS NULL AND a.accepted_at = excluded.accepted_at",
                rows,
            )
            found = {
                request_id: accepted_command(request_id, *row)
                for request_id, *row in conn.execute(
                    'SELECT request_id, fingerprint, topic, partition, "offset", accepted_at '
                    f"FROM {schema}.loglane_accepted WHERE service = %s "
                    "AND request_id = ANY(%s)",
                    (service, [command.request_id for command in commands]),
                )
            }
            self._ledger_writes += 1
            if self._ledger_writes % _PRUNE_LEDGER_EVERY == 0:
                conn.execute(
                    f"DELETE FROM {schema}.loglane_accepted WHERE accepted_at < %s",
                    (time.time() - self.ledger_retention,),
                )
        return [found[command.request_id] for command in commands]

    def release(self, service: str, claim: AcceptedCommand) -> None:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            conn.execute(
                f"DELETE FROM {schema}.loglane_accepted WHERE service = %s AND request_id = %s "
                "AND topic IS NULL AND accepted_at = %s",
                (service, claim.request_id, claim.accepted_at),
            )

    def accepted(self, service: str, request_id: str) -> AcceptedCommand | None:
        schema = quote(self.schema(service))
        with self._connection() as conn:
            row = conn.execute(
                f'SELECT fingerprint, topic, partition, "offset", accepted_at '
                f"FROM {schema}.loglane_accepted WHERE service = %s AND request_id = %s",
                (service, request_id),
            ).fetchone()
        return None if row is None else accepted_command(request_id, *row)

    # -- push -----------------------------------------------------------------------------------

    def listen(self, *services: str) -> CommitListener:
        """A listener for the commits of `services` in this store's schemas."""
        listener = CommitListener(self._conninfo, self._schema_name, where=self._where)
        if services:
            listener.follow(*services)
        return listener

    def change_marker(self) -> int | None:
        """Moves when a batch of a service this store has served commits, in any process.

        A thread of its own LISTENs for the commits (started by the first call), so reading
        the marker costs no round trip to the server.
        """
        if self._marker is None:
            with self._lock:
                if self._marker is None:
                    self._marker = ChangeMarker(self.listen)
        self._marker.follow(self._services)
        return self._marker.value

    def close(self) -> None:
        if self._marker is not None:
            self._marker.close()
        self._pool.close()

    # -- rebuilding views by replay (`loglane rebuild`) -----------------------------------------

    def shadow(self, service: str) -> PostgresStore:
        """The schema `<schema>__rebuild` in the same database (`<schema>__rebuild_<service>`
        when the schema is not one per service), so its tables can be moved into the live
        schema by a rename."""
        template = self.schema_template
        suffix = "__rebuild" if "{service}" in template else "__rebuild_{service}"
        return PostgresStore(
            self._conninfo,
            schema=template + suffix,
            pool_size=2,
            pool_timeout=self._pool.timeout,
        )

    @contextmanager
    def swap_views(self, service: str, shadow: Store) -> Iterator[ViewSwap]:
        if not isinstance(shadow, PostgresStore) or shadow._conninfo != self._conninfo:
            raise ConfigurationError(
                "views in PostgreSQL are swapped with those of a shadow schema in the same "
                "database (PostgresStore.shadow)"
            )
        schema = self.schema(service)
        with self._connection() as conn, conn.transaction():
            # EXCLUSIVE conflicts with the ROW SHARE lock of every batch's `FOR UPDATE`
            # fence, that of a partition without a position row yet too, and lets plain
            # reads through: every live batch waits, or had committed before. A lock not
            # had within a minute ends the swap with BackendUnavailableError.
            conn.execute("SET LOCAL lock_timeout = '60s'")
            conn.execute(f"LOCK TABLE {quote(schema)}.loglane_positions IN EXCLUSIVE MODE")
            rows = conn.execute(
                f'SELECT topic, partition, "offset" FROM {quote(schema)}.loglane_positions '
                "WHERE service = %s FOR UPDATE",
                (service,),
            ).fetchall()
            positions = {TopicPartition(topic, part): offset for topic, part, offset in rows}
            yield _PostgresViewSwap(conn, schema, shadow.schema(service), positions)

    def discard(self, service: str) -> None:
        with self._connection() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {quote(self._schema_name(service))} CASCADE")
        self.close()


class _PostgresTransaction(StoreTransaction):
    """A batch's transaction on one pooled connection, from the fence to the commit."""

    def __init__(
        self, store: PostgresStore, conn: Connection, schema: str, ending: ExitStack
    ) -> None:
        self._store = store
        self._conn = conn
        self._schema = schema
        self._ending = ending  # what gives the connection back: `send_all` takes it along
        self.sent = False

    def get(self, view: View[Any], key: Key) -> Document | None:
        check_keys(view, [key])
        table = self._store._view_table(view)
        cursor = self._conn.cursor()
        try:
            with self._conn.pipeline():  # one round trip: the lock, then a fresh snapshot
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (row_lock(table.name, key),))
                cursor.execute(table.select_one, (table.key_param(key),))
            row = cursor.fetchone()
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        return None if row is None else view.stored(*row)

    def _failed(self, exc: psycopg.Error) -> LoglaneError:
        """A read's error as the worker must see it, never as the handler's own: the
        transaction is unusable after it, so the whole batch ends, and runs again or is
        halved, and a handler must not be retried on it."""
        if lost_a_race(exc):
            return BatchConflictError(one_line(exc))
        if isinstance(exc, psycopg.OperationalError):
            self._store._pool.check()
            return BackendUnavailableError(
                f"PostgreSQL ({self._store._where}) is unavailable: {one_line(exc)}"
            )
        return BatchRejectedError(one_line(exc))

    def parked_records(self, service: str, source: TopicPartition, key: str) -> list[bytes]:
        try:
            rows = self._conn.execute(
                f"SELECT record FROM {quote(self._schema)}.loglane_parked_records "
                "WHERE service = %s AND topic = %s AND partition = %s AND key = %s "
                'ORDER BY "offset"',
                (service, source.topic, source.partition, key),
            ).fetchall()
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        return [bytes(record) for (record,) in rows]

    def get_many(self, view: View[Any], keys: Sequence[Key]) -> dict[Key, Document]:
        # A key no row can have is not found, rather than failing the batch: one command's
        # key must not stop its partition (its handler's write is refused, and dead-lettered).
        keys = [key for key in keys if storable(key)]
        if not keys:
            return {}
        table = self._store._view_table(view)
        locks = sorted({row_lock(table.name, key) for key in keys})  # one order: no deadlock
        cursor = self._conn.cursor()
        try:
            with self._conn.pipeline():
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(k) FROM unnest(%b) AS k ORDER BY k",
                    (arrays.encode(locks, arrays.BigintArray),),
                )
                cursor.execute(table.select_many, (table.keys_param(keys),))
            rows = cursor.fetchall()
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        current = view.version
        return {
            key: doc if version == current else OutdatedDocument(doc, version)
            for key, doc, version in rows
        }

    def find(
        self, view: View[Any], where: Mapping[str, Any], limit: int
    ) -> list[tuple[Key, Document]]:
        view.check_filters(where)
        check_keys(view, [value for value in where.values() if isinstance(value, str)])
        table = self._store._view_table(view)
        condition, params = table.condition(where)
        key = quote(view.key)
        cursor = self._conn.cursor()
        try:
            # the keys first, then their locks (as `get_many` takes them), then the rows
            # read again under the locks, those that still match
            keys = [
                found
                for (found,) in cursor.execute(
                    f"SELECT {key} FROM {table.name} {condition} ORDER BY {key} LIMIT %s",
                    (*params, limit),
                )
            ]
            if not keys:
                return []
            locks = sorted({row_lock(table.name, found) for found in keys})
            also = f"{condition} AND" if condition else "WHERE"
            with self._conn.pipeline():
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(k) FROM unnest(%b) AS k ORDER BY k",
                    (arrays.encode(locks, arrays.BigintArray),),
                )
                cursor.execute(
                    f"{table.select_rows} {also} {key} = ANY(%s) ORDER BY {key}", (*params, keys)
                )
            rows = cursor.fetchall()
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        return [(found, view.stored(doc, version)) for found, doc, version in rows]

    def write_all(
        self,
        batches: Sequence[Batch],
        published: Mapping[TopicPartition, int] | None = None,
    ) -> dict[TopicPartition, int]:
        with ExitStack() as pipeline:
            rows = self._write(batches, published, pipeline, commit=False)
            with write_errors():
                pipeline.close()  # the results: an error raises here
        return outbox_seqs(batches, rows.last_seq())

    def send_all(
        self,
        batches: Sequence[Batch],
        published: Mapping[TopicPartition, int] | None = None,
    ) -> PendingCommit:
        with ExitStack() as pipeline:  # closed (read) here only if the write fails
            rows = self._write(batches, published, pipeline, commit=True)
            held = pipeline.pop_all()
        self.sent = True
        return SentCommit(batches, rows, held, self._ending.pop_all())

    def _write(
        self,
        batches: Sequence[Batch],
        published: Mapping[TopicPartition, int] | None,
        pipeline: ExitStack,
        *,
        commit: bool,
    ) -> PostgresRows:
        """Send the batches' statements in one pipeline `pipeline` holds open, and the
        COMMIT too if `commit`; their results are read as it closes."""
        store = self._store
        written = {view for batch in batches for view in batch.writes}
        unprepared = [view for view in written if view not in store._tables]
        if unprepared:
            store.prepare(batches[0].service, unprepared)
        tables = {view: store._tables[view] for view in written}
        rows = PostgresRows(self._conn, self._schema, tables, pipeline, commit=commit)
        prune = store._prune_clock.due(batches, store.ledger_retention)
        with write_errors():
            write_batch(batches, published or {}, rows, prune_requests_before=prune)
        return rows


def describe(conninfo: str) -> str:
    """`user@host:port/dbname` for messages, from `conninfo` and the PG* variables, no password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise BadURLError(
            f"not a PostgreSQL URL: {one_line(exc)}; Loglane's own options are schema, "
            "pool_size, pool_timeout and ledger_retention, the rest must be libpq parameters"
        ) from None

    def value(name: str, variable: str, default: str) -> str:
        return str(params.get(name) or os.environ.get(variable) or default)

    user = value("user", "PGUSER", "")
    host = value("host", "PGHOST", "localhost")
    port = value("port", "PGPORT", "5432")
    dbname = value("dbname", "PGDATABASE", user or "postgres")
    return f"{user + '@' if user else ''}{host}:{port}/{dbname}"


class _PostgresViewSwap(ViewSwap):
    """A swap in one transaction on the live schema, which holds its positions locked."""

    def __init__(
        self, conn: Connection, schema: str, shadow: str, positions: dict[TopicPartition, int]
    ) -> None:
        self._conn = conn
        self._schema = schema
        self._shadow = shadow
        self.positions = positions

    def replace(self, views: Sequence[View[Any]]) -> None:
        lock_schema(self._conn, self._schema)  # no worker's prepare alters a table meanwhile
        for view in views:
            name = quote(view.name)
            found = self._conn.execute(
                "SELECT to_regclass(%s)", (f"{quote(self._shadow)}.{name}",)
            ).fetchone()
            if found is None or found[0] is None:
                raise ConfigurationError(f"the shadow has no table for the view {view.name!r}")
            # readers queue behind these locks for the moment to the commit, then read the
            # table now under the name; its indexes move with it
            self._conn.execute(f"DROP TABLE IF EXISTS {quote(self._schema)}.{name}")
            self._conn.execute(
                f"ALTER TABLE {quote(self._shadow)}.{name} SET SCHEMA {quote(self._schema)}"
            )
