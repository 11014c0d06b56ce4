"""PRODUCT §6 K1: events/s of one worker process on Kafka, against a raw confluent-kafka loop.

Both sides start from the same backlog of commands on a Kafka topic and do the same work per
event: consume it, decode it, upsert a view row and store the input position in one database
transaction, produce an output event to `<service>.out` and wait for Kafka's acks, then commit
the consumer offsets. The raw side is a hand-written loop over confluent-kafka, the database
driver (psycopg's pipelined `executemany`, or `sqlite3`) and `json`, with none of Loglane's
machinery (no envelope parsing, no validation, no outbox, no duplicate tracking, no request
tracking, no fencing). Both producers are configured alike (idempotent, acks=all, linger 5 ms,
murmur2_random). `--store postgresql` is K1 proper; `--store sqlite` pairs Kafka with SQLite.

The clock starts when the first records arrive, so joining the consumer group is not counted.
Each run uses fresh topics (deleted afterwards) and a fresh schema or database file.

    scripts/kafka start && scripts/postgres start
    .venv/bin/python bench/k1_kafka.py --events 50000 --runs 3 --store postgresql
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import confluent_kafka as ck
import psycopg
from rich.console import Console

import servers
from loglane import Service
from loglane.logs.kafka import KafkaLog
from loglane.runner import freeze_startup_objects
from loglane.stores.base import Store
from loglane.stores.postgres import PostgresStore
from loglane.stores.sqlite import SQLiteStore
from loglane.worker import Worker, ensure_topics
from report import print_medians, print_run
from workload import bench_service, commands, drain_rate

BATCH = 1000
PRODUCER = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "partitioner": "murmur2_random",
}


def prepare_backlog(bootstrap: str, service: Service, events: int) -> None:
    log = KafkaLog.from_url(f"kafka://{bootstrap}")
    ensure_topics(log, [service])
    for start in range(0, events, 5000):
        log.append(commands(service, start, min(start + 5000, events)))
    log.close()


class Database:
    """Where the views go: a fresh SQLite file, or a fresh schema on a PostgreSQL server."""

    def __init__(self, postgres_url: str | None, folder: Path, name: str) -> None:
        self.postgres_url = postgres_url
        self.folder = folder
        self.schema = name.replace("-", "_")

    def store(self) -> Store:
        if self.postgres_url is None:
            return SQLiteStore(self.folder / "bench.db")
        return PostgresStore(self.postgres_url, schema=self.schema)

    def raw(self) -> RawViews:
        if self.postgres_url is None:
            return SQLiteViews(self.folder / "raw.db")
        return PostgresViews(self.postgres_url, f"{self.schema}_raw")

    def drop(self) -> None:
        if self.postgres_url is not None:
            with psycopg.connect(self.postgres_url, autocommit=True) as conn:
                for schema in (self.schema, f"{self.schema}_raw"):
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class RawViews:
    """A hand-written view table and positions table, written in one transaction."""

    def write(self, upserts: list[tuple[str, str]], positions: list[tuple[str, int, int]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteViews(RawViews):
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("CREATE TABLE items (key TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        self.db.execute(
            "CREATE TABLE positions (topic TEXT, partition INTEGER, offset INTEGER, "
            "PRIMARY KEY (topic, partition))"
        )

    def write(self, upserts: list[tuple[str, str]], positions: list[tuple[str, int, int]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO items VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
            upserts,
        )
        self.db.executemany("INSERT OR REPLACE INTO positions VALUES (?, ?, ?)", positions)
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class PostgresViews(RawViews):
    def __init__(self, url: str, schema: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f'CREATE SCHEMA "{schema}"')
        self.conn.execute(f'SET search_path TO "{schema}"')
        self.conn.execute("CREATE TABLE items (key TEXT PRIMARY KEY, doc JSONB NOT NULL)")
        self.conn.execute(
            'CREATE TABLE positions (topic TEXT, partition INTEGER, "offset" BIGINT, '
            "PRIMARY KEY (topic, partition))"
        )

    def write(self, upserts: list[tuple[str, str]], positions: list[tuple[str, int, int]]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO items VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
                upserts,
            )
            cursor.executemany(
                "INSERT INTO positions VALUES (%s, %s, %s) ON CONFLICT (topic, partition) "
                'DO UPDATE SET "offset" = excluded."offset"',
                positions,
            )

    def close(self) -> None:
        self.conn.close()


def run_loglane(bootstrap: str, service: Service, database: Database, events: int) -> float:
    log = KafkaLog.from_url(f"kafka://{bootstrap}")
    store = database.store()
    worker = Worker(service, log, store, batch_size=BATCH)
    worker.start()
    freeze_startup_objects()  # as `loglane run` and `loglane worker` do
    rate = drain_rate(worker, events)
    worker.close()
    store.close()
    log.close()
    return rate


def run_raw(bootstrap: str, service: Service, database: Database, events: int) -> float:
    """The same work by hand: what confluent-kafka and the database driver alone cost."""
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{service.name}-raw",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    producer = ck.Producer({"bootstrap.servers": bootstrap, **PRODUCER})
    views = database.raw()
    consumer.subscribe([service.input_topic])
    handled, first, started = 0, 0, 0.0
    while handled < events:
        messages = consumer.consume(BATCH, 0.1)
        if not messages:
            continue
        if handled == 0:
            first, started = len(messages), time.perf_counter()
        upserts: list[tuple[str, str]] = []
        positions: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is not None:
                continue
            command = json.loads(message.value() or b"{}")
            document = json.dumps({"key": command["key"], "value": command["value"]})
            upserts.append((command["key"], document))
            positions[message.topic() or "", message.partition() or 0] = (message.offset() or 0) + 1
            producer.produce(
                service.output_topic, document.encode(), message.key(), headers=message.headers()
            )
        views.write(upserts, [(t, p, o) for (t, p), o in positions.items()])
        producer.flush()
        consumer.commit(
            offsets=[ck.TopicPartition(t, p, o) for (t, p), o in positions.items()],
            asynchronous=False,
        )
        handled += len(messages)
    elapsed = time.perf_counter() - started
    consumer.close()
    views.close()
    return (events - first) / elapsed


Runner = Callable[[str, Service, Database, int], float]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bootstrap", default=os.environ.get("LOGLANE_KAFKA", "127.0.0.1:19092"))
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--postgres-url", help="default: LOGLANE_PG, else what scripts/postgres url prints"
    )
    args = parser.parse_args()
    postgres_url = None
    if args.store == "postgresql":
        postgres_url = args.postgres_url or servers.postgres_url()
    console = Console()
    runners: dict[str, Runner] = {"loglane": run_loglane, "raw confluent-kafka loop": run_raw}
    results: dict[str, list[float]] = {name: [] for name in runners}
    for run in range(args.runs):
        for name, runner in runners.items():
            service = bench_service(f"k1-{uuid.uuid4().hex[:8]}")
            with tempfile.TemporaryDirectory(prefix="loglane-k1-") as folder:
                database = Database(postgres_url, Path(folder), service.name)
                prepare_backlog(args.bootstrap, service, args.events)
                try:
                    results[name].append(runner(args.bootstrap, service, database, args.events))
                finally:
                    servers.delete_topics(args.bootstrap, service)
                    database.drop()
        print_run(console, run, results)
    print_medians(
        console,
        f"K1: Kafka + {args.store}, {args.events:,} events, one worker process, "
        f"median of {args.runs}",
        results,
        unit="events/s",
        baselines={"vs raw": "raw confluent-kafka loop"},
    )


if __name__ == "__main__":
    main()
