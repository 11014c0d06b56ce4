"""How the PostgreSQL store writes a batch: every statement of the commit in one pipeline
(a set of rows is one statement, `_postgres_arrays`), the COMMIT with them when the commit
is sent ahead (`SentCommit`), and the server's errors as the worker takes them."""

from __future__ import annotations

import hashlib
import selectors
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import psycopg

from loglane.envelope import COMMAND_SOURCE
from loglane.errors import BatchConflictError, BatchRejectedError
from loglane.records import TopicPartition
from loglane.stores import _postgres_arrays as arrays
from loglane.stores._batch import RowSink, outbox_seqs
from loglane.stores._postgres_notify import channel, payload
from loglane.stores._postgres_tables import ViewTable, quote
from loglane.stores.base import Batch, PendingCommit, Statement
from loglane.views import Key, RowImage, View

Connection = psycopg.Connection[tuple[Any, ...]]


class SentCommit(PendingCommit):
    """A batch transaction whose statements and COMMIT went in one pipeline, unread."""

    def __init__(
        self,
        batches: Sequence[Batch],
        rows: PostgresRows,
        pipeline: ExitStack,
        ending: ExitStack,
    ) -> None:
        super().__init__({})
        self._batches = batches
        self._rows = rows
        self._pipeline = pipeline
        self._ending = ending

    def wait(self) -> dict[TopicPartition, int]:
        with self._ending, write_errors():  # then the connection goes back to the pool
            self._pipeline.close()  # Sync, then every result: the first error raises
            return outbox_seqs(self._batches, self._rows.last_seq())


@contextmanager
def write_errors() -> Iterator[None]:
    """A batch write's errors as the worker takes them: a lost lock race is a conflict (the
    batch runs again), data or SQL the server refuses a rejection (the batch is halved), and
    a lost server stays an `OperationalError`, for `_connection` to report."""
    try:
        yield
    except psycopg.OperationalError as exc:
        if lost_a_race(exc):
            raise BatchConflictError(one_line(exc)) from exc
        raise
    except (psycopg.Error, OverflowError, ValueError) as exc:
        raise BatchRejectedError(one_line(exc)) from exc


def roll_back_if_open(conn: Connection) -> None:
    """End a transaction a failure left open; a connection that cannot is discarded by the
    pool as it comes back."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with suppress(psycopg.Error):
            conn.rollback()


def check_keys(view: View[Any], keys: Sequence[Key]) -> None:
    """Refuse, before anything is sent, a key PostgreSQL text cannot hold: a NUL sent would
    abort the batch's transaction; refused here it is only the handler's own error."""
    if any(isinstance(key, str) and not storable(key) for key in keys):
        raise ValueError(f"view {view.name!r}: PostgreSQL keys cannot hold NUL characters")


def storable(key: Key) -> bool:
    """Whether a view's key column (TEXT or BIGINT) can hold `key`."""
    if isinstance(key, str):
        return "\x00" not in key
    return -(2**63) <= key < 2**63


def lost_a_race(exc: psycopg.Error) -> bool:
    """A deadlock or a serialization failure (SQLSTATE class 40): the transaction was rolled
    back and runs again as it is. psycopg does not derive all of them from one class."""
    return (exc.sqlstate or "").startswith("40")


def row_lock(table: str, key: Key) -> int:
    """A 64-bit advisory lock id for one row: a collision only serializes two batches more."""
    digest = hashlib.blake2b(f"{table}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresRows(RowSink):
    """A commit's statements, sent in one pipeline as `finish` is called: a set of rows is
    one statement (`_postgres_arrays`). Only a first position runs at once, for its row
    count."""

    holds_position_locks = True  # `PostgresStore.transaction` locked them FOR UPDATE

    def __init__(
        self,
        conn: Connection,
        schema: str,
        tables: Mapping[View[Any], ViewTable],
        pipeline: ExitStack,
        *,
        commit: bool,
    ) -> None:
        self.cursor = conn.cursor()
        self._conn = conn
        self._schema = schema
        self._tables = tables
        self._pipeline = pipeline
        self._commit = commit
        self._queued: list[tuple[str, Any]] = []
        self._any_outbox = False

    def table(self, name: str) -> str:
        return f"{quote(self._schema)}.{name}"

    def execute_now(self, sql: str, params: Sequence[Any]) -> int:
        self.cursor.execute(sql, params)
        return self.cursor.rowcount

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        self._queued.append((sql, params))

    def execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._queued.append((sql, rows))

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        self._insert(table, columns, COLUMN_TYPES[table.rsplit(".", 1)[-1]], rows)

    def _insert(
        self,
        table: str,
        columns: tuple[str, ...],
        types: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        on_conflict: str = "",
    ) -> None:
        if rows:
            self._queued.append(arrays.insert(table, columns, types, rows, on_conflict))

    def write_view(self, view: View[Any], rows: Mapping[Key, RowImage | None]) -> None:
        table = self._tables[view]
        upserts = [table.values(key, image) for key, image in rows.items() if image]
        self._insert(table.name, table.columns, table.types, upserts, table.on_conflict)
        deletes = [key for key, image in rows.items() if image is None]
        if deletes:
            self.execute(table.delete, (table.keys_param(deletes),))

    def run_statements(self, statements: Sequence[Statement]) -> None:
        # the service's schema first, so a handler's SQL names its tables unqualified
        self.execute(f"SET LOCAL search_path TO {quote(self._schema)}, public")
        for statement in statements:
            self.execute(statement.sql, statement.params)

    id_list_mark = "%b"  # a text[] in binary (`_postgres_arrays`)

    def id_list(self, ids: list[str]) -> bytes:
        return arrays.encode(ids, arrays.TextArray)

    def finish(self, batches: Sequence[Batch]) -> int | None:
        """Send what waits (and the COMMIT) in the pipeline; the last seq is `last_seq`'s."""
        waiting = [o.request_id for b in batches for o in b.requests if o.source == COMMAND_SOURCE]
        for batch in batches:
            source = batch.source
            notice = payload(self._schema, source.topic, source.partition, batch.position, waiting)
            self.execute("SELECT pg_notify(%s, %s)", (channel(batch.service), notice))
            waiting = []  # told once
        self._any_outbox = any(batch.outbox for batch in batches)
        self._pipeline.enter_context(self._conn.pipeline())
        for sql, params in self._queued:
            if isinstance(params, list):
                self.cursor.executemany(sql, params)
            else:
                self.cursor.execute(sql, params)
        if self._any_outbox:
            outcomes = self.table("loglane_outcomes")
            self.cursor.execute(f"SELECT currval(pg_get_serial_sequence('{outcomes}', 'seq'))")
        if self._commit:
            self._conn.execute("COMMIT")
            _flush(self._conn)
        return None

    def last_seq(self) -> int | None:
        """The seq of the last outbox row written, None without any; once the pipeline
        was read."""
        row = self.cursor.fetchone() if self._any_outbox else None
        return None if row is None else int(row[0])


def _flush(conn: Connection) -> None:
    """Hand all that the pipeline holds to the socket, without waiting for results."""
    pgconn = conn.pgconn
    if not pgconn.flush():  # 0: all sent
        return
    with selectors.DefaultSelector() as selector:  # the socket's buffer is full
        selector.register(pgconn.socket, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while pgconn.flush():
            for _, events in selector.select():
                if events & selectors.EVENT_READ:  # so the server never waits on its writes
                    pgconn.consume_input()


COLUMN_TYPES = {  # the column types, in OUTCOME_COLUMNS' order
    "loglane_outcomes": (
        "text",
        "text",
        "integer",
        "text",
        "text",
        "text",
        "text",
        "text",
        "bytea",
        "float8",
    ),
}


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
