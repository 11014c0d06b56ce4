"""Async handlers on the embedded stack: what a handler that awaits other systems costs.

The E1 job (upsert one view row, emit one event) with its handler `async`, three ways, from
the same backlog over 4 partitions:

- `sync`: the handler as a plain function, the baseline;
- `async`: the same handler as a coroutine that awaits nothing, which shows what running it on
  an event loop costs;
- `async, N ms I/O`: the coroutine first awaits `asyncio.sleep(N ms)`, a stand-in for a call
  to another system. Handlers of one partition run one after another, in order; those of
  different partitions run at the same time, so the bound is partitions / N ms per second,
  printed as `bound`.

On the embedded stack by default; `--kafka` runs it on Kafka and PostgreSQL (fresh topics
and schema per run, deleted afterwards). A worker of coroutine handlers asks for a consumer
that spreads its polls over the partitions; how evenly depends on what the log has fetched:
the embedded log shares each poll out evenly, a Kafka consumer shares out what librdkafka
has fetched (up to twice the batch; it fetches 64 KiB of a partition at a time for such a
consumer, not 1 MiB, so that holds records of more partitions), no partition taking more
than an equal share while others still have records. `asyncio.sleep` itself overshoots:
1 ms takes about 1.1 ms here, so the true ceiling is a little under the printed bound.

    .venv/bin/python bench/a1_async.py --events 20000 --io-ms 1 --runs 3
    scripts/kafka start && scripts/postgres start
    .venv/bin/python bench/a1_async.py --events 20000 --io-ms 1 --runs 3 --kafka
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import Iterator

import psycopg
from rich.console import Console

import servers
from loglane import Service, Transaction
from loglane.logs.base import Log
from loglane.runner import freeze_startup_objects
from loglane.stores.base import Store
from loglane.urls import open_log, open_store
from loglane.worker import Worker, ensure_topics
from report import print_medians, print_run
from workload import PARTITIONS, Item, SetValue, ValueSet, commands, drain_rate

BATCH = 1000


def async_service(name: str, io_seconds: float | None) -> Service:
    """The E1 service with its handler a coroutine (None: a plain function)."""
    service = Service(name, partitions=PARTITIONS)
    items = service.view("items", Item, key="key")

    def apply(command: SetValue, tx: Transaction) -> None:
        tx[items].put(Item(key=command.key, value=command.value))
        tx.emit(ValueSet(key=command.key, value=command.value))

    if io_seconds is None:
        service.handles(SetValue, key="key")(apply)
        return service

    @service.handles(SetValue, key="key")
    async def set_value(command: SetValue, tx: Transaction) -> None:
        if io_seconds:
            await asyncio.sleep(io_seconds)
        apply(command, tx)

    return service


@contextlib.contextmanager
def backends(service: Service, kafka: str | None) -> Iterator[tuple[Log, Store]]:
    """A fresh embedded log and SQLite file, or fresh topics and schema on Kafka and
    PostgreSQL, removed afterwards."""
    if kafka is None:
        with tempfile.TemporaryDirectory(prefix="loglane-a1-") as folder:
            log, store = (
                open_log(f"embedded:///{folder}/log.db"),
                open_store(f"sqlite:///{folder}/views.db", service.name),
            )
            yield log, store
            store.close()
            log.close()
        return
    postgres = servers.postgres_url()
    log = open_log(f"kafka://{kafka}")
    store = open_store(f"{postgres}?schema={service.name}", service.name)
    try:
        yield log, store
    finally:
        store.close()
        log.close()
        servers.delete_topics(kafka, service)
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{service.name}" CASCADE')  # type: ignore[arg-type]


def run(service: Service, events: int, kafka: str | None) -> float:
    """Events/s of one worker draining a backlog of `events` commands (`drain_rate`)."""
    with backends(service, kafka) as (log, store):
        ensure_topics(log, [service])
        for start in range(0, events, 5000):
            log.append(commands(service, start, min(start + 5000, events)))
        worker = Worker(service, log, store, batch_size=BATCH)
        worker.start()
        freeze_startup_objects()
        rate = drain_rate(worker, events)
        worker.close()
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--io-ms", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--kafka", nargs="?", const="127.0.0.1:19092", help="on Kafka (bootstrap) and PostgreSQL"
    )
    args = parser.parse_args()
    io_name = f"async, {args.io_ms:g} ms I/O"
    contenders = {"sync": None, "async": 0.0, io_name: args.io_ms / 1000}
    console = Console()
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for number in range(args.runs):
        for name, io_seconds in contenders.items():
            service = async_service(f"a1_{uuid.uuid4().hex[:8]}", io_seconds)
            results[name].append(run(service, args.events, args.kafka))
        print_run(console, number, results)
    bound = PARTITIONS / (args.io_ms / 1000)
    console.print(
        f"bound of {io_name}: {PARTITIONS} partitions / {args.io_ms:g} ms = {bound:,.0f}/s"
    )
    print_medians(
        console,
        f"A1: {args.events:,} events, {'Kafka + PostgreSQL' if args.kafka else 'embedded'},"
        f" one worker process, median of {args.runs}",
        results,
        unit="events/s",
        baselines={"vs sync": "sync"},
    )


if __name__ == "__main__":
    main()
