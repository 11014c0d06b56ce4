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

    .venv/bin/python bench/a1_async.py --events 20000 --io-ms 1 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from rich.console import Console

from loglane import Service, Transaction
from loglane.logs.embedded import EmbeddedLog
from loglane.runner import freeze_startup_objects
from loglane.stores.sqlite import SQLiteStore
from loglane.worker import Worker, ensure_topics
from report import print_medians, print_run
from workload import PARTITIONS, Item, SetValue, ValueSet, commands

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


def run(folder: Path, service: Service, events: int) -> float:
    log = EmbeddedLog(folder / "log.db", synchronous="NORMAL")
    ensure_topics(log, [service])
    for start in range(0, events, 5000):
        log.append(commands(service, start, min(start + 5000, events)))
    store = SQLiteStore(folder / "views.db")
    worker = Worker(service, log, store, batch_size=BATCH)
    worker.start()
    freeze_startup_objects()
    started = time.perf_counter()
    while worker.handled < events:
        worker.run_once(timeout=0.1, send_ahead=True)
    elapsed = time.perf_counter() - started
    worker.close()
    store.close()
    log.close()
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--io-ms", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    io_name = f"async, {args.io_ms:g} ms I/O"
    contenders = {"sync": None, "async": 0.0, io_name: args.io_ms / 1000}
    console = Console()
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for number in range(args.runs):
        for name, io_seconds in contenders.items():
            with tempfile.TemporaryDirectory(prefix="loglane-a1-") as folder:
                service = async_service("bench", io_seconds)
                results[name].append(run(Path(folder), service, args.events))
        print_run(console, number, results)
    bound = PARTITIONS / (args.io_ms / 1000)
    console.print(
        f"bound of {io_name}: {PARTITIONS} partitions / {args.io_ms:g} ms = {bound:,.0f}/s"
    )
    print_medians(
        console,
        f"A1: {args.events:,} events, one worker process, median of {args.runs}",
        results,
        unit="events/s",
        baselines={"vs sync": "sync"},
    )


if __name__ == "__main__":
    main()
