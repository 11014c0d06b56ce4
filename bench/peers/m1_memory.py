"""PRODUCT §6 M1: the memory of one Loglane worker draining a large backlog.

One `loglane worker` process (the peers' `tx[view]` service: read a row, put it, emit one
event per command) drains `--events` commands; its resident memory (VmRSS) is sampled every
second, with how far the drain has come. It passes if the RSS stays under 300 MB and levels
off: the median of the last third of the samples within 10 MB (or 5%) of the middle third's.
The worker keeps the ids applied in the last 100,000 offsets of each partition, so memory may
rise until 400,000 commands have been handled: judge flatness on the 1,000,000 backlog.

    .venv/bin/python bench/peers/m1_memory.py --events 1000000                  # embedded
    .venv/bin/python bench/peers/m1_memory.py --events 1000000 --stack kafka    # Kafka + PG

The embedded stack runs with `synchronous=normal` on the log and the store (memory, not
fsyncs, is what is measured); the backlog is written before the worker starts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import confluent_kafka as ck
import harness
from harness import PEERS, REPO
from loglane_app import view_service
from procstat import memory_mb

from loglane.logs.embedded import EmbeddedLog
from loglane.status import service_status
from loglane.urls import open_log, open_store
from loglane.worker import ensure_topics

PARTITIONS = 4
LIMIT_MB = 300.0
CHUNK = 5000


def embedded_stack(folder: Path, name: str, events: int) -> tuple[str, str, Callable[[], int]]:
    """Write the backlog to an embedded log; the URLs, and how to read the drain's progress."""
    service = view_service(name, PARTITIONS)
    log = EmbeddedLog(folder / "log.db", synchronous="NORMAL")
    ensure_topics(log, [service])
    for start in range(0, events, CHUNK):
        log.append(harness.messages(start, min(start + CHUNK, events), service.input_topic))
    log.close()
    log_url = f"embedded:///{folder}/log.db?synchronous=normal"
    db_url = f"sqlite:///{folder}/{{service}}.db?synchronous=normal"
    status_log = open_log(log_url)
    status_store = open_store(db_url, name)

    def handled() -> int:
        status = service_status(service, status_log, status_store)
        return sum(p.stored or 0 for p in status.partitions)

    return log_url, db_url, handled


def kafka_stack(
    bootstrap: str, postgres: str, name: str, events: int
) -> tuple[str, str, Callable[[], int]]:
    harness.create_topics(bootstrap, [f"{name}.in", f"{name}.out"], PARTITIONS)
    for start in range(0, events, CHUNK):
        chunk = harness.messages(start, min(start + CHUNK, events))
        harness.produce(
            bootstrap, f"{name}.in", [(m.key or b"", m.value, list(m.headers)) for m in chunk]
        )
    watcher = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": name})
    inputs = [ck.TopicPartition(f"{name}.in", p) for p in range(PARTITIONS)]

    def handled() -> int:
        return harness.group_committed(watcher, inputs)

    return f"kafka://{bootstrap}", f"{postgres}?schema={name}", handled


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--stack", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--bootstrap", default=os.environ.get("LOGLANE_KAFKA", "127.0.0.1:19092"))
    parser.add_argument("--postgres-url", help="default: LOGLANE_PG, else scripts/postgres url")
    args = parser.parse_args()
    name = f"m1_{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="loglane-m1-") as tmp:
        folder = Path(tmp)
        started = time.monotonic()
        postgres = ""
        if args.stack == "embedded":
            log_url, db_url, handled = embedded_stack(folder, name, args.events)
        else:
            postgres = args.postgres_url or os.environ.get("LOGLANE_PG") or harness.postgres_url()
            log_url, db_url, handled = kafka_stack(args.bootstrap, postgres, name, args.events)
        print(f"backlog of {args.events:,} commands written in {time.monotonic() - started:.0f} s")
        try:
            samples = drain(folder, name, log_url, db_url, args.batch, args.events, handled)
        finally:
            if args.stack == "kafka":
                harness.delete_topics(
                    args.bootstrap, [f"{name}.in", f"{name}.out", f"{name}.dlq"], [name]
                )
                harness.drop_schema(postgres, name)
    report(samples, args.events, args.stack)


Sample = tuple[float, float, int]  # seconds since start, RSS MB, commands handled


def drain(
    folder: Path,
    name: str,
    log_url: str,
    db_url: str,
    batch: int,
    events: int,
    handled: Callable[[], int],
) -> list[Sample]:
    env = {**os.environ, "PEERS_SERVICE": name, "PEERS_PARTITIONS": str(PARTITIONS)}
    argv = [
        str(REPO / ".venv" / "bin" / "loglane"),
        "worker",
        f"{PEERS / 'loglane_app.py'}:by_view",
        "--service",
        name,
        "--log",
        log_url,
        "--db",
        db_url,
        "--batch-size",
        str(batch),
    ]
    log_path = folder / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        while True:
            time.sleep(1.0)
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited: {log_path.read_text()[-2000:]}")
            done = handled()
            samples.append((time.monotonic() - started, memory_mb(process.pid), done))
            if len(samples) % 10 == 0:
                print(f"  {samples[-1][0]:4.0f} s  {done:>9,} handled  RSS {samples[-1][1]:.0f} MB")
            if done >= events:
                return samples
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def report(samples: list[Sample], events: int, stack: str) -> None:
    """Flat means the last third of the samples' median is within 10 MB (or 5%) of the middle
    third's: memory that fills a bounded structure early (the applied-id window holds the last
    100,000 offsets of each partition) levels off, memory that grows with the backlog does not."""
    rss = [mb for _, mb, _ in samples]
    third = max(len(rss) // 3, 1)
    middle, last = statistics.median(rss[third : 2 * third] or rss), statistics.median(rss[-third:])
    growth = last - middle
    flat = growth <= max(0.05 * middle, 10.0)
    half = samples[len(samples) // 2 :]
    slope = 0.0
    if len(half) >= 2 and half[-1][2] > half[0][2]:
        fit = statistics.linear_regression(
            [float(d) for _, _, d in half], [mb for _, mb, _ in half]
        )
        slope = fit.slope * 100_000
    seconds = samples[-1][0]
    print(
        f"M1 ({stack}): {events:,} commands drained in {seconds:.0f} s from the worker's start "
        f"({events / seconds:,.0f}/s), {len(samples)} RSS samples, one a second"
    )
    print("  progress  RSS MB")
    for i in range(0, len(samples), max(len(samples) // 10, 1)):
        _, mb, done = samples[i]
        print(f"  {100 * done / events:7.0f}%  {mb:6.0f}")
    print(
        f"RSS min {min(rss):.0f} MB, max {max(rss):.0f} MB, last {rss[-1]:.0f} MB; median of the "
        f"middle third {middle:.0f} MB, of the last third {last:.0f} MB ({growth:+.0f} MB); "
        f"second half: {slope:+.1f} MB per 100,000 commands"
    )
    verdict = "flat" if flat else "GROWING"
    bounded = "under" if max(rss) < LIMIT_MB else "OVER"
    print(f"verdict: {verdict}, {bounded} {LIMIT_MB:.0f} MB")


if __name__ == "__main__":
    main()
