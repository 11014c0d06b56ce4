"""`loglane demo`: the shop landscape on the embedded stack, driven by generated commands."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from loglane.commands import post
from loglane.events import Event
from loglane.examples import shop
from loglane.runner import WorkerThreads
from loglane.service import Service
from loglane.stores.base import RequestStatus
from loglane.urls import open_log, open_store


@dataclass(frozen=True, slots=True)
class DemoResult:
    outcomes: dict[str, Counter[RequestStatus]]
    seconds: float


def generate(count: int, seed: int = 7) -> list[tuple[Service, Event]]:
    """Half new customers (a few duplicates), half orders (a few for unknown customers)."""
    rng = random.Random(seed)
    customers = max(count // 2, 1)
    commands: list[tuple[Service, Event]] = []
    for i in range(customers):
        number = i if rng.random() > 0.05 else rng.randrange(i + 1)
        commands.append(
            (
                shop.customers,
                shop.CreateCustomer(
                    customer_id=f"c{number}", name=rng.choice(["Ada", "Grace", "Alan", "Edsger"])
                ),
            )
        )
    for i in range(count - customers):
        known = rng.random() > 0.1
        customer = f"c{rng.randrange(customers)}" if known else f"ghost{i}"
        commands.append(
            (
                shop.orders,
                shop.PlaceOrder(
                    order_id=f"o{i}", customer_id=customer, amount_cents=rng.randrange(100, 10_000)
                ),
            )
        )
    return commands


def run_demo(directory: Path, count: int, console: Console) -> DemoResult:
    """Post the customers, wait for them, then the orders (which need known customers)."""
    log_url = f"embedded:///{directory}/log.db?synchronous=normal"
    db_url = f"sqlite:///{directory}/{{service}}.db"
    threads = WorkerThreads(list(shop.landscape), log_url=log_url, db_url=db_url)
    threads.start()
    log = open_log(log_url)
    stores = {s.name: open_store(db_url, s.name) for s in shop.landscape}
    outcomes: dict[str, Counter[RequestStatus]] = {s.name: Counter() for s in shop.landscape}
    commands = generate(count)
    started = time.perf_counter()
    try:
        with Progress(console=console, transient=True) as progress:
            for phase in (shop.customers, shop.orders):
                batch = [command for service, command in commands if service is phase]
                posting = progress.add_task(f"posting {phase.name} commands", total=len(batch))
                pending: list[str] = []
                for command in batch:
                    pending.append(post(log, phase, command)[0])
                    progress.advance(posting)
                waiting = progress.add_task(f"{phase.name} handling", total=len(pending))
                deadline = time.monotonic() + 300
                while pending and time.monotonic() < deadline and not threads.failures:
                    found = {rid: stores[phase.name].request(phase.name, rid) for rid in pending}
                    for outcome in found.values():
                        if outcome is not None:
                            outcomes[phase.name][outcome.status] += 1
                    pending = [rid for rid, outcome in found.items() if outcome is None]
                    progress.update(waiting, completed=len(batch) - len(pending))
                    if pending:
                        time.sleep(0.05)
        return DemoResult(outcomes, time.perf_counter() - started)
    finally:
        threads.join(timeout=30)
        for store in stores.values():
            store.close()
        log.close()


def print_result(result: DemoResult, directory: Path, console: Console) -> None:
    table = Table(title="The shop after the demo")
    table.add_column("service")
    for status in RequestStatus:
        table.add_column(status.value, justify="right")
    for service, counts in result.outcomes.items():
        table.add_row(service, *(str(counts[status]) for status in RequestStatus))
    console.print(table)
    total = sum(sum(c.values()) for c in result.outcomes.values())
    console.print(
        f"{total} commands handled in {result.seconds:.2f}s "
        f"({total / result.seconds:,.0f}/s end to end, posting included)"
    )
    store = open_store(f"sqlite:///{directory}/{{service}}.db", shop.customers.name)
    sample = store.query(shop.customers_view, limit=3)
    store.close()
    console.print("first customers:", ", ".join(f"{c.customer_id}={c.name}" for c in sample))
    console.print(
        f"log and views are in {directory}; inspect them with "
        f"`loglane status loglane.examples.shop --log embedded:///{directory}/log.db "
        f"--db 'sqlite:///{directory}/{{service}}.db'`"
    )
