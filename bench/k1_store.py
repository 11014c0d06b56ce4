"""PRODUCT §6 K1, the store's side: view rows/s written by PostgresStore.commit, against psycopg.

Every writer starts from the same batches of view rows (pydantic models) and writes each batch
in one transaction, with the fenced position update, into tables of the same shape (the
store's own, created by `prepare`): `items (key, doc JSONB, grp)` with a btree index on `grp`.
With `--full` each batch also carries what a worker commits with it: one command's outcome
row (with the event it emitted) per view row, the applied ids, and the published watermark
moved past the previous batch's rows.

The plain writers are hand-written psycopg: `executemany` (which psycopg pipelines), and COPY
into a temporary table merged with INSERT ... ON CONFLICT. The store sends each table's rows
as one `INSERT ... SELECT FROM unnest(arrays)`, all in one pipeline.

    scripts/postgres start
    .venv/bin/python bench/k1_store.py --rows 100000 --batch 1000 --runs 3 [--full]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import psycopg
from pydantic import BaseModel
from pydantic_core import to_json
from rich.console import Console

from loglane.envelope import Envelope, now_rfc3339
from loglane.records import Message, TopicPartition, encode_headers
from loglane.service import Service
from loglane.stores.base import Batch, RequestOutcome, RequestStatus
from loglane.stores.postgres import PostgresStore
from report import print_medians, print_run

SOURCE = TopicPartition("k1.in", 0)
SOURCE_ROW = ("k1", SOURCE.topic, SOURCE.partition)


class Item(BaseModel):
    key: str
    grp: str
    value: int
    note: str


class Work:
    """The batches every writer writes: rows, and (with --full) what travels with them."""

    def __init__(self, rows: int, batch: int, keys: int, full: bool) -> None:
        self.full = full
        self.batches: list[list[Item]] = []
        self.outboxes: list[list[Message]] = []
        self.outcomes: list[list[RequestOutcome]] = []
        for start in range(0, rows, batch):
            items = [
                Item(key=f"k{i % keys}", grp=f"g{i % 97}", value=i, note="x" * 40)
                for i in range(start, min(start + batch, rows))
            ]
            self.batches.append(items)
            ids = [str(uuid.uuid4()) for _ in items]
            messages = [_message(item, i) for item, i in zip(items, ids, strict=True)]
            self.outboxes.append(messages)
            self.outcomes.append(
                [
                    RequestOutcome(
                        request_id=i, status=RequestStatus.DONE, event_ids=(i,), events=(m,)
                    )
                    for i, m in zip(ids, messages, strict=True)
                ]
            )

    @property
    def rows(self) -> int:
        return sum(len(items) for items in self.batches)


def _message(item: Item, event_id: str) -> Message:
    envelope = Envelope(
        id=event_id, type="ItemSet", source="k1", time=now_rfc3339(), data=to_json(item)
    )
    return Message("k1.out", item.key.encode(), envelope.data, envelope.headers())


service = Service("k1")
items_view = service.view("items", Item, key="key", indexes=["grp"])


def fresh_store(url: str, **options: Any) -> PostgresStore:
    store = PostgresStore(url, schema=f"k1_{uuid.uuid4().hex[:10]}", **options)
    store.prepare(service.name, [items_view])
    return store


def run_store(url: str, work: Work) -> float:
    store = fresh_store(url)
    position: int | None = None
    started = time.perf_counter()
    for n, items in enumerate(work.batches):
        batch = Batch(
            service=service.name,
            source=SOURCE,
            expected_position=position,
            position=(position or 0) + len(items),
            writes={items_view: {item.key: items_view.image(item) for item in items}},
        )
        if work.full:
            batch.outbox = work.outboxes[n]
            batch.requests = work.outcomes[n]
            batch.applied_ids = [outcome.request_id for outcome in work.outcomes[n]]
        last_seq = store.commit(batch)
        if work.full and last_seq is not None:  # published: the worker deletes it at once
            store.delete_outbox(service.name, {SOURCE: last_seq})
        position = batch.position
    elapsed = time.perf_counter() - started
    _drop(url, store.schema(service.name))
    store.close()
    return work.rows / elapsed


def run_plain(url: str, work: Work, copy: bool) -> float:
    """The same rows by hand with psycopg, into tables of the same shape."""
    schema_store = fresh_store(url)
    schema = schema_store.schema(service.name)
    schema_store.close()
    s = f'"{schema}"'
    write = _copy_writer(s) if copy else _executemany_writer(s)
    with psycopg.connect(url, autocommit=True) as conn:
        position = 0
        last_seq: int | None = None
        started = time.perf_counter()
        for n, items in enumerate(work.batches):
            with conn.transaction():
                cursor = conn.cursor()
                if position:
                    cursor.execute(
                        f'UPDATE {s}.loglane_positions SET "offset" = %s WHERE service = %s '
                        'AND topic = %s AND partition = %s AND "offset" = %s',
                        (position + len(items), *SOURCE_ROW, position),
                    )
                else:
                    cursor.execute(
                        f"INSERT INTO {s}.loglane_positions VALUES (%s, %s, %s, %s)",
                        (*SOURCE_ROW, len(items)),
                    )
                if cursor.rowcount != 1:
                    raise RuntimeError("the plain writer lost its fence")
                rows = [(i.key, to_json(i).decode(), i.grp) for i in items]
                last_seq = write(conn, cursor, work, n, rows, last_seq)
            position += len(items)
        elapsed = time.perf_counter() - started
    _drop(url, schema)
    return work.rows / elapsed


Writer = Callable[[psycopg.Connection[Any], psycopg.Cursor[Any], Work, int, list[Any], Any], Any]

_UPSERT = "ON CONFLICT (key) DO UPDATE SET doc = excluded.doc, grp = excluded.grp"
_OUTCOMES = (
    "service, source_topic, source_partition, request_source, request_id, status, "
    "event_ids, messages, handled_at"
)
_OUTCOME_MARKS = ", ".join(["%s"] * 9)


def _outcome_rows(work: Work, n: int) -> list[tuple[Any, ...]]:
    """One row per command: its outcome, with the event it emitted."""
    now = time.time()
    return [
        (
            *SOURCE_ROW,
            o.source,
            o.request_id,
            o.status.value,
            json.dumps(o.event_ids),
            msgpack.packb([(m.topic, m.key, m.value, encode_headers(m.headers)) for m in o.events]),
            now,
        )
        for o in work.outcomes[n]
    ]


def _executemany_writer(s: str) -> Writer:
    def write(
        conn: psycopg.Connection[Any],
        cursor: psycopg.Cursor[Any],
        work: Work,
        n: int,
        rows: list[Any],
        last_seq: Any,
    ) -> Any:
        cursor.executemany(
            f"INSERT INTO {s}.items (key, doc, grp) VALUES (%s, %s, %s) {_UPSERT}", rows
        )
        if not work.full:
            return None
        _rest(cursor, s, work, n, last_seq)
        cursor.executemany(
            f"INSERT INTO {s}.loglane_outcomes ({_OUTCOMES}) VALUES ({_OUTCOME_MARKS})",
            _outcome_rows(work, n),
        )
        return _last_seq(cursor, s)

    return write


def _copy_writer(s: str) -> Writer:
    def write(
        conn: psycopg.Connection[Any],
        cursor: psycopg.Cursor[Any],
        work: Work,
        n: int,
        rows: list[Any],
        last_seq: Any,
    ) -> Any:
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS stage_items ON COMMIT DELETE ROWS AS "
            f"SELECT key, doc, grp FROM {s}.items WITH NO DATA"
        )
        _copy(cursor, "stage_items (key, doc, grp)", rows)
        cursor.execute(f"INSERT INTO {s}.items (key, doc, grp) SELECT * FROM stage_items {_UPSERT}")
        if not work.full:
            return None
        _rest(cursor, s, work, n, last_seq)
        _copy(cursor, f"{s}.loglane_outcomes ({_OUTCOMES})", _outcome_rows(work, n))
        return _last_seq(cursor, s)

    return write


def _rest(cursor: psycopg.Cursor[Any], s: str, work: Work, n: int, last_seq: Any) -> None:
    """Applied ids and the previous batch's outcome rows published, as the store writes them."""
    ids = [o.request_id for o in work.outcomes[n]]
    cursor.execute(
        f"INSERT INTO {s}.loglane_applied VALUES (%s, %s, %s, %s, %s)",
        (*SOURCE_ROW, n, ids),
    )
    if last_seq is not None:
        cursor.execute(
            f"UPDATE {s}.loglane_positions SET published = %s WHERE service = %s "
            "AND topic = %s AND partition = %s",
            (last_seq, *SOURCE_ROW),
        )


def _last_seq(cursor: psycopg.Cursor[Any], s: str) -> Any:
    cursor.execute(f"SELECT currval(pg_get_serial_sequence('{s}.loglane_outcomes', 'seq'))")
    row = cursor.fetchone()
    return None if row is None else row[0]


def _copy(cursor: psycopg.Cursor[Any], target: str, rows: list[Any]) -> None:
    with cursor.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _drop(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url", default="postgresql://loglane:loglane@127.0.0.1:15432/loglane_test"
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=20_000, help="distinct keys (updates after)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="outbox, requests, applied ids too")
    args = parser.parse_args()
    work = Work(args.rows, args.batch, args.keys, args.full)
    writers: dict[str, Callable[[], float]] = {
        "PostgresStore.commit": lambda: run_store(args.url, work),
        "plain psycopg executemany": lambda: run_plain(args.url, work, copy=False),
        "plain psycopg COPY + merge": lambda: run_plain(args.url, work, copy=True),
    }
    results: dict[str, list[float]] = {name: [] for name in writers}
    console = Console()
    for run in range(args.runs):
        for name, writer in writers.items():
            results[name].append(writer())
        print_run(console, run, results)
    what = "view rows + outcomes + applied ids" if args.full else "view rows"
    print_medians(
        console,
        f"K1 store: {work.rows:,} rows in batches of {args.batch}, {what}, median of {args.runs}",
        results,
        unit="view rows/s",
        baselines={
            "vs executemany": "plain psycopg executemany",
            "vs COPY + merge": "plain psycopg COPY + merge",
        },
        first_column="writer",
    )


if __name__ == "__main__":
    main()
