"""The PostgreSQL store's tables: Loglane's own, migrated by version, and one per view."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from pydantic_core import to_jsonable_python

from loglane import migrations
from loglane.errors import ConfigurationError, UnreadableRowError
from loglane.records import pack
from loglane.stores import _postgres_arrays as arrays
from loglane.stores.base import run_pending_migrations
from loglane.views import RESERVED_COLUMNS, Key, RowImage, View

Connection = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of Loglane's own tables; statements run with the schema on the search path,
    then `then`, for rows that SQL alone cannot move."""

    version: int
    description: str
    statements: tuple[str, ...]
    then: Callable[[Connection], None] | None = None


def _outbox_rows_into_outcomes(conn: Connection) -> None:
    """Migration 7: each message still in the outbox becomes an outcome row of its own
    (`messages` is MessagePack, which SQL cannot write), in seq order, then the outbox goes."""
    rows = conn.execute(
        "SELECT service, source_topic, source_partition, topic, key, value, headers "
        "FROM loglane_outbox ORDER BY seq"
    ).fetchall()
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO loglane_outcomes (service, source_topic, source_partition, messages, "
            "handled_at) VALUES (%s, %s, %s, %s, extract(epoch FROM now()))",
            [
                (service, topic, partition, pack([message]))
                for service, topic, partition, *message in rows
            ],
        )
    conn.execute("DROP TABLE loglane_outbox")


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
    Migration(
        2,
        "request outcomes keep their events; the HTTP API's command ledger",
        (
            "ALTER TABLE loglane_requests ADD COLUMN events BYTEA",
            """CREATE TABLE loglane_accepted (
                service TEXT NOT NULL,
                request_id TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                topic TEXT,
                partition INTEGER,
                "offset" BIGINT,
                accepted_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (service, request_id)
            )""",
            "CREATE INDEX loglane_accepted_by_time ON loglane_accepted (accepted_at)",
        ),
    ),
    Migration(
        3,
        "origin watermarks with positions; request outcomes by source, pruned by age",
        (
            "ALTER TABLE loglane_positions ADD COLUMN origins BYTEA",
            "ALTER TABLE loglane_requests ADD COLUMN source TEXT NOT NULL DEFAULT 'loglane'",
            "ALTER TABLE loglane_requests ADD COLUMN handled_at DOUBLE PRECISION NOT NULL "
            "DEFAULT extract(epoch FROM now())",
            "ALTER TABLE loglane_requests DROP CONSTRAINT loglane_requests_pkey",
            "ALTER TABLE loglane_requests ADD PRIMARY KEY (service, source, request_id)",
            "CREATE INDEX loglane_requests_by_time ON loglane_requests (handled_at)",
        ),
    ),
    Migration(
        4,
        "keys parked behind a dead letter, and the records that wait behind it",
        (
            """CREATE TABLE loglane_parked_keys (
                service TEXT NOT NULL,
                topic TEXT NOT NULL,
                partition INTEGER NOT NULL,
                key TEXT NOT NULL,
                head TEXT NOT NULL,
                PRIMARY KEY (service, topic, partition, key)
            )""",
            """CREATE TABLE loglane_parked_records (
                service TEXT NOT NULL,
                topic TEXT NOT NULL,
                partition INTEGER NOT NULL,
                key TEXT NOT NULL,
                "offset" BIGINT NOT NULL,
                record BYTEA NOT NULL,
                PRIMARY KEY (service, topic, partition, key, "offset")
            )""",
        ),
    ),
    Migration(
        5,
        "Loglane's own names and ids compare bytewise; outcomes are pruned through BRIN",
        (
            # The database's collation (en_US.UTF-8, C.UTF-8: strcoll per comparison) made
            # every key of these tables' indexes slow to insert, and Loglane only ever looks
            # its names and ids up by equality.
            *(
                f"ALTER TABLE {table} "
                + ", ".join(f'ALTER COLUMN {column} TYPE TEXT COLLATE "C"' for column in columns)
                for table, columns in (
                    ("loglane_positions", ("service", "topic")),
                    ("loglane_outbox", ("service", "source_topic")),
                    ("loglane_applied", ("service", "topic")),
                    ("loglane_requests", ("service", "source", "request_id")),
                    ("loglane_accepted", ("service", "request_id")),
                    ("loglane_parked_keys", ("service", "topic", "key")),
                    ("loglane_parked_records", ("service", "topic", "key")),
                )
            ),
            # Outcomes are written in time order, so block ranges of handled_at prune them as
            # well as a B-tree did, at a fraction of its cost per row written.
            "DROP INDEX loglane_requests_by_time",
            "CREATE INDEX loglane_requests_by_time ON loglane_requests USING brin (handled_at)",
        ),
    ),
    Migration(
        6,
        "the outbox is indexed by source alone; applied ids are stored uncompressed",
        (
            # Every read and delete of the outbox goes by source (`loglane_outbox_by_source`,
            # which ends in seq); the primary key on seq was one more index for every row
            # written and deleted, and the identity column keeps seqs unique without it.
            "ALTER TABLE loglane_outbox DROP CONSTRAINT loglane_outbox_pkey",
            # A batch's ids (some 9 KB for 250 UUIDs) went through pglz on every commit, for
            # rows that live only as long as the dedupe window.
            "ALTER TABLE loglane_applied ALTER COLUMN event_ids SET STORAGE EXTERNAL",
        ),
    ),
    Migration(
        7,
        "one outcome row per command, with its events: outcomes and outbox in one table",
        (
            # A commit wrote each event twice (an outbox row, and its command's outcome) and
            # deleted the outbox row once published; now it writes one row, and publishing
            # moves a watermark.
            "ALTER TABLE loglane_positions ADD COLUMN published BIGINT NOT NULL DEFAULT 0",
            """CREATE TABLE loglane_outcomes (
                seq BIGINT GENERATED ALWAYS AS IDENTITY,
                service TEXT COLLATE "C" NOT NULL,
                source_topic TEXT COLLATE "C",
                source_partition INTEGER,
                request_source TEXT COLLATE "C",
                request_id TEXT COLLATE "C",
                status TEXT,
                detail TEXT,
                event_ids TEXT,
                messages BYTEA,
                handled_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE INDEX loglane_outcomes_to_publish
                ON loglane_outcomes (service, source_topic, source_partition, seq)
                WHERE messages IS NOT NULL""",
            """CREATE INDEX loglane_outcomes_by_request
                ON loglane_outcomes (service, request_source, request_id)
                WHERE request_id IS NOT NULL""",
            # the rows of no command, deleted once published (outcomes stay to be asked for)
            """CREATE INDEX loglane_outcomes_of_no_request
                ON loglane_outcomes (service, source_topic, source_partition, seq)
                WHERE request_id IS NULL""",
            "CREATE INDEX loglane_outcomes_by_time ON loglane_outcomes USING brin (handled_at)",
            # outcomes so far: their events were published, or wait in the outbox (moved next)
            """INSERT INTO loglane_outcomes (service, request_source, request_id, status,
                detail, event_ids, messages, handled_at)
                SELECT service, source, request_id, status, detail, event_ids, events,
                handled_at FROM loglane_requests ORDER BY handled_at""",
            "DROP TABLE loglane_requests",
        ),
        then=_outbox_rows_into_outcomes,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_SQL_TYPES = {str: 'TEXT COLLATE "C"', int: "BIGINT", float: "DOUBLE PRECISION", bool: "BOOLEAN"}
_TYPE_NAMES = {str: "text", int: "bigint", float: "double precision", bool: "boolean"}
_FROM_DOC = {
    str: "doc ->> %(field)s",
    int: "CASE WHEN (doc ->> %(field)s) ~ '^-?[0-9]{1,18}$' THEN (doc ->> %(field)s)::bigint END",
    float: "CASE WHEN jsonb_typeof(doc -> %(field)s) = 'number' "
    "THEN (doc ->> %(field)s)::double precision END",
    bool: "CASE WHEN jsonb_typeof(doc -> %(field)s) = 'boolean' "
    "THEN (doc ->> %(field)s)::boolean END",
}


def quote(name: str) -> str:
    """`name` as a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def migrate(conn: Connection, schema: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
    """Create `schema` and apply the `migrations` it has not seen, in one transaction."""
    latest = migrations[-1].version
    with conn.transaction():
        lock_schema(conn, schema)
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
        if current > latest:
            raise ConfigurationError(
                f"schema {schema!r} is at version {current}, written by a newer Loglane than "
                f"this one (version {latest}); upgrade Loglane"
            )
        for migration in migrations[current:]:
            for statement in migration.statements:
                conn.execute(statement)
            if migration.then is not None:
                migration.then(conn)
            conn.execute(
                "INSERT INTO loglane_schema_version (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )


class _Migrator(migrations.Migrator):
    dialect = "postgresql"

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        self._conn.execute(sql, params)


def run_migrations(
    conn: Connection, schema: str, service: str, declared: Sequence[migrations.Migration]
) -> None:
    """Run the migrations of `service` not yet recorded in `schema`, in one transaction,
    with the schema first on the search path."""
    with conn.transaction():
        lock_schema(conn, schema)
        conn.execute(f"SET LOCAL search_path TO {quote(schema)}, public")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS loglane_migrations (service TEXT NOT NULL, "
            "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "PRIMARY KEY (service, name))"
        )
        applied = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM loglane_migrations WHERE service = %s", (service,)
            )
        }
        run_pending_migrations(
            service,
            declared,
            applied,
            _Migrator(conn),
            lambda migration: conn.execute(
                "INSERT INTO loglane_migrations (service, name) VALUES (%s, %s)",
                (service, migration.name),
            ),
        )


def lock_schema(conn: Connection, schema: str) -> None:
    """Serialize DDL on `schema` across processes, until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"loglane schema {schema}",))


class ViewTable:
    """The statements of one view's table in one schema, built once from its declaration.

    Every row is written with the view's version (`doc_version`) and read with it, NULL
    (rows written before versions) as 1; a table not yet migrated to have versions
    (`versioned=False`) reads as all version 1.
    """

    def __init__(self, schema: str, view: View[Any], *, versioned: bool = True) -> None:
        self.view = view
        self.name = f"{quote(schema)}.{quote(view.name)}"
        self.columns = (
            quote(view.key),
            "doc",
            *(quote(column.name) for column in view.columns),
            "doc_version",
        )
        # each column's SQL type, as rows are sent (`_postgres_arrays.insert`)
        self.types = (
            _TYPE_NAMES[view.key_kind],
            "jsonb",
            *(_TYPE_NAMES[column.kind] for column in view.columns),
            "integer",
        )
        self._kinds = {column.name: column.kind for column in view.columns}
        self._kinds[view.key] = view.key_kind
        self._column_names = tuple(column.name for column in view.columns)
        self._text_columns = tuple(i for i, column in enumerate(view.columns) if column.kind is str)
        updates = ", ".join(f"{name} = excluded.{name}" for name in self.columns[1:])
        self.on_conflict = f"ON CONFLICT ({quote(view.key)}) DO UPDATE SET {updates}"
        # the keys go as one binary array (`keys_param`)
        self.delete = f"DELETE FROM {self.name} WHERE {quote(view.key)} = ANY(%b)"
        version = "coalesce(doc_version, 1)" if versioned else "1"
        self.select_rows = f"SELECT {quote(view.key)}, doc::text, {version} FROM {self.name}"
        self.select_one = (
            f"SELECT doc::text, {version} FROM {self.name} WHERE {quote(view.key)} = %s"
        )
        self.select_many = f"{self.select_rows} WHERE {quote(view.key)} = ANY(%b)"

    def condition(self, where: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """`WHERE` the columns equal `where` (empty without filters), and its parameters."""
        if not where:
            return "", []
        clauses = " AND ".join(f"{quote(name)} = %s" for name in where)
        return f"WHERE {clauses}", [self.param(name, value) for name, value in where.items()]

    def key_param(self, key: Any) -> Any:
        return as_text(key) if self.view.key_kind is str else key

    def keys_param(self, keys: Sequence[Any]) -> bytes:
        """`keys` as one binary array parameter of `select_many` or `delete`."""
        kind = arrays.TextArray if self.view.key_kind is str else arrays.BigintArray
        return arrays.encode([self.key_param(key) for key in keys], kind)

    def param(self, name: str, value: Any) -> Any:
        """`value` as the column `name` holds it: fields that are not plain str, int, float
        or bool are kept as their JSON text."""
        return as_text(value) if self._kinds[name] is str else value

    def values(self, key: Key, image: RowImage) -> tuple[Any, ...]:
        """The row as the table's columns: the key, the document, the indexed fields."""
        if key.__class__ is not self.view.key_kind:
            key = self.key_param(key)
        document = image.document.decode()
        if not self._column_names:
            return (key, document, self.view.version)
        columns = list(image.columns)
        for i in self._text_columns:
            if columns[i].__class__ is not str:
                columns[i] = as_text(columns[i])
        return (key, document, *columns, self.view.version)

    @classmethod
    def create(cls, conn: Connection, schema: str, view: View[Any]) -> ViewTable:
        """Create the table and its indexes; add the version column to a table older than
        it, and columns for indexes declared since, filled from the stored rows. A column
        whose field changed its type is changed to it, and filled again the same way."""
        reserved = sorted(set(RESERVED_COLUMNS) & {view.key, *view.indexes})
        if reserved:
            raise ConfigurationError(
                f"view {view.name!r}: {', '.join(map(repr, reserved))} is a column of every "
                "view table (the row and its version); rename that field"
            )
        table = cls(schema, view)
        with conn.transaction():
            lock_schema(conn, schema)
            existing: dict[str, str] = dict(
                conn.execute(
                    "SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute "
                    "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                    (table.name,),
                ).fetchall()
            )
            if not existing:
                conn.execute(
                    f"CREATE TABLE {table.name} ({quote(view.key)} {_SQL_TYPES[view.key_kind]} "
                    "PRIMARY KEY, doc JSONB NOT NULL, doc_version INTEGER)"
                )
            elif "doc_version" not in existing:
                conn.execute(f"ALTER TABLE {table.name} ADD COLUMN doc_version INTEGER")
            indexes = {
                name
                for (name,) in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
                    (schema, view.name),
                )
            }
            added = False
            for column in view.columns:
                name = quote(column.name)
                if column.name not in existing:
                    conn.execute(
                        f"ALTER TABLE {table.name} ADD COLUMN {name} {_SQL_TYPES[column.kind]}"
                    )
                elif existing[column.name] != _TYPE_NAMES[column.kind]:
                    conn.execute(
                        f"ALTER TABLE {table.name} ALTER COLUMN {name} "
                        f"TYPE {_SQL_TYPES[column.kind]} USING NULL"
                    )
                else:
                    continue
                added = True
                # values the column's type cannot hold (an old row's) are left NULL
                conn.execute(
                    f"UPDATE {table.name} SET {name} = {_FROM_DOC[column.kind]}",
                    {"field": column.name},
                )
                index = f"{view.name}_by_{column.name}"
                if index not in indexes:
                    conn.execute(
                        f"CREATE INDEX IF NOT EXISTS {quote(index)} "
                        f"ON {table.name} ({quote(column.name)}, {quote(view.key)})"
                    )
            if added and view.upcasters:
                table._fill_from_upcast_rows(conn)
        return table

    def _fill_from_upcast_rows(self, conn: Connection) -> None:
        """Set the indexed columns of rows of older versions from the rows upcast, as they
        read, not as they were stored; a row that cannot be upcast keeps what it had."""
        view = self.view
        old = conn.execute(
            f"{self.select_rows} WHERE coalesce(doc_version, 1) <> %s", (view.version,)
        ).fetchall()
        updates = []
        for key, doc, version in old:
            try:
                row = view.load(view.stored(doc, version), key)
            except UnreadableRowError:
                continue
            values = view.column_values(row)
            updates.append(
                (*(self.param(c.name, v) for c, v in zip(view.columns, values, strict=True)), key)
            )
        assignments = ", ".join(f"{quote(column.name)} = %s" for column in view.columns)
        conn.cursor().executemany(
            f"UPDATE {self.name} SET {assignments} WHERE {quote(view.key)} = %s", updates
        )


def as_text(value: Any) -> Any:
    """A value for a TEXT column: strings as they are, anything else as its JSON text."""
    if value is None or isinstance(value, str):
        return value
    plain = to_jsonable_python(value)
    return plain if isinstance(plain, str) else json.dumps(plain)
