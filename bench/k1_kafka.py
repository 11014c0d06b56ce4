"""PRODUCT §6 K1: events/s of one worker process on Kafka, against a raw confluent-kafka loop.

Both sides start from the same backlog of commands on a Kafka topic and do the same work per
event: consume it, decode it, upsert a view row and store the input position in one database
transaction, produce an output event to `<service>.out` and wait for Kafka's acks, then commit
the consumer offsets. The raw side is a hand-written loop over confluent-kafka, `sqlite3` and
`json` with none of Loglane's machinery (no envelope parsing, no validation, no outbox, no
duplicate tracking, no request tracking, no fencing). Both producers are configured alike
(idempotent, acks=all, linger 5 ms, murmur2_random). The store is SQLite for now; K1 proper
pairs Kafka with PostgreSQL.

The clock starts when the first records arrive, so joining the consumer group is not counted.
Each run uses fresh topics, deleted afterwards.

    scripts/kafka start
    .venv/bin/python bench/k1_kafka.py --events 50000 --runs 3 [--bootstrap 127.0.0.1:19092]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from loglane import Event, Service, Transaction
from loglane.commands import command_message
from loglane.logs.kafka import KafkaLog
from loglane.stores.sqlite import SQLiteStore
from loglane.worker import Worker, ensure_topics

PARTITIONS = 4
BATCH = 1000
PRODUCER = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "partitioner": "murmur2_random",
}


class SetValue(Event):
    key: str
    value: int


class ValueSet(Event):
    key: str
    value: int


class Item(BaseModel):
    key: str
    value: int


def bench_service(name: str) -> Service:
    """A one-handler service: upsert the item, emit that it was set."""
    service = Service(name, partitions=PARTITIONS)
    items = service.view("items", Item, key="key")

    @service.handles(SetValue, key="key")
    def set_value(command: SetValue, tx: Transaction) -> None:
        tx[items].put(Item(key=command.key, value=command.value))
        tx.emit(ValueSet(key=command.key, value=command.value))

    return service


def prepare_backlog(bootstrap: str, service: Service, events: int) -> None:
    log = KafkaLog.from_url(f"kafka://{bootstrap}")
    ensure_topics(log, [service])
    for start in range(0, events, 5000):
        log.append(
            [
                command_message(service, SetValue(key=f"k{i % 10_000}", value=i))[1]
                for i in range(start, min(start + 5000, events))
            ]
        )
    log.close()


def run_loglane(bootstrap: str, service: Service, folder: Path, events: int) -> float:
    log = KafkaLog.from_url(f"kafka://{bootstrap}")
    store = SQLiteStore(folder / "bench.db")
    worker = Worker(service, log, store, batch_size=BATCH)
    worker.start()
    while worker.handled == 0:
        worker.run_once(timeout=0.1)
    first, started = worker.handled, time.perf_counter()
    while worker.handled < events:
        worker.run_once(timeout=0.1)
    elapsed = time.perf_counter() - started
    worker.close()
    store.close()
    log.close()
    return (events - first) / elapsed


def run_raw(bootstrap: str, service: Service, folder: Path, events: int) -> float:
    """The same work by hand: what confluent-kafka and sqlite3 alone cost."""
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
    views = sqlite3.connect(folder / "raw.db", isolation_level=None)
    views.execute("PRAGMA journal_mode = WAL")
    views.execute("PRAGMA synchronous = NORMAL")
    views.execute("CREATE TABLE items (key TEXT PRIMARY KEY, doc TEXT NOT NULL)")
    views.execute(
        "CREATE TABLE positions (topic TEXT, partition INTEGER, offset INTEGER, "
        "PRIMARY KEY (topic, partition))"
    )
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
        views.execute("BEGIN")
        views.executemany(
            "INSERT INTO items VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
            upserts,
        )
        views.executemany(
            "INSERT OR REPLACE INTO positions VALUES (?, ?, ?)",
            [(topic, partition, offset) for (topic, partition), offset in positions.items()],
        )
        views.execute("COMMIT")
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


def delete_topics(bootstrap: str, service: Service) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [service.input_topic, service.output_topic, service.dlq_topic]
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        future.result()


Runner = Callable[[str, Service, Path, int], float]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bootstrap", default=os.environ.get("LOGLANE_KAFKA", "127.0.0.1:19092"))
    args = parser.parse_args()
    console = Console()
    runners: dict[str, Runner] = {"loglane": run_loglane, "raw confluent-kafka loop": run_raw}
    results: dict[str, list[float]] = {name: [] for name in runners}
    for run in range(args.runs):
        for name, runner in runners.items():
            service = bench_service(f"k1-{uuid.uuid4().hex[:8]}")
            with tempfile.TemporaryDirectory(prefix="loglane-k1-") as folder:
                prepare_backlog(args.bootstrap, service, args.events)
                try:
                    results[name].append(runner(args.bootstrap, service, Path(folder), args.events))
                finally:
                    delete_topics(args.bootstrap, service)
        console.print(
            f"run {run + 1}: "
            + ", ".join(f"{name} {rates[-1]:,.0f}/s" for name, rates in results.items())
        )
    table = Table(
        title=f"K1 (SQLite store): {args.events:,} events, one worker process, "
        f"median of {args.runs}"
    )
    table.add_column("loop")
    table.add_column("events/s", justify="right")
    table.add_column("vs raw", justify="right")
    raw = statistics.median(results["raw confluent-kafka loop"])
    for name, rates in results.items():
        median = statistics.median(rates)
        table.add_row(name, f"{median:,.0f}", f"{median / raw:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
