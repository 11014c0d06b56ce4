"""Profile Loglane's worker on the P1 workload: where its CPU goes, by function.

Runs one `Worker` of `loglane_app.py`'s service (by_view or by_sql) in this process over a fresh
backlog on Kafka + PostgreSQL (or the embedded log + SQLite), with py-spy sampling it, and
prints the functions that take the most samples, inclusive and self, plus the rate and the
CPU seconds per event of this process. Profile before and after a change to the hot path:

    scripts/kafka start && scripts/postgres start
    .venv/bin/pip install py-spy   # a tool for this script only, not a dependency of Loglane
    .venv/bin/python bench/peers/hotspots.py --events 50000 [--sql] [--embedded] [--top 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import harness
from loglane_app import sql_service, view_service
from procstat import cpu_seconds, pids_where

from loglane.logs.base import Log
from loglane.runner import freeze_startup_objects
from loglane.stores.base import Store
from loglane.urls import open_log, open_store
from loglane.worker import Worker, ensure_topics

# the servers' processes, whose CPU per event is printed too (with others' work on them, if any)
_OTHERS = {"PostgreSQL": "postgres: ", "Kafka": "kafka.Kafka"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--sql", action="store_true", help="the tx.execute service")
    parser.add_argument("--embedded", action="store_true", help="embedded log + SQLite")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()

    name = f"prof{uuid.uuid4().hex[:6]}"
    service = (sql_service if args.sql else view_service)(name, 4)
    folder = Path(tempfile.mkdtemp(prefix="loglane-profile-"))
    log, store = _backends(args.embedded, name, folder)
    if args.sql:
        _create_accounts(store, args.embedded, name, folder)
    ensure_topics(log, [service])
    for start in range(0, args.events, 5000):
        log.append(harness.messages(start, min(start + 5000, args.events), service.input_topic))

    worker = Worker(service, log, store, batch_size=1000)
    worker.start()
    freeze_startup_objects()  # as `loglane run` and `loglane worker` do
    while worker.handled == 0:
        worker.run_once(timeout=0.1, send_ahead=True)  # as `Worker.run` makes its passes
    output = folder / "profile.txt"
    spy = _py_spy(output, args.rate)
    others = {name: pids_where(match) for name, match in _OTHERS.items()}
    before = {name: sum(map(cpu_seconds, pids)) for name, pids in others.items()}
    first, started, cpu = worker.handled, time.perf_counter(), time.process_time()
    while worker.handled < args.events:
        worker.run_once(timeout=0.1, send_ahead=True)  # as `Worker.run` makes its passes
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = {name: sum(map(cpu_seconds, pids)) for name, pids in others.items()}
    spy.send_signal(signal.SIGINT)
    spy.wait(60)
    worker.close()
    store.close()
    log.close()

    handled = worker.handled - first
    print(f"{handled:,} events in {elapsed:.1f} s: {handled / elapsed:,.0f}/s, ", end="")
    print(f"{1e6 * cpu / handled:.0f} µs CPU per event in this process", end="")
    for name in others:
        print(f", {1e6 * (after[name] - before[name]) / handled:.0f} in {name}", end="")
    print()
    _print_profile(output, args.top)
    if not args.embedded:
        harness.drop_schema(harness.postgres_url(), name)
        topics = [service.input_topic, service.output_topic, service.dlq_topic]
        harness.delete_topics(os.environ.get("LOGLANE_KAFKA", "127.0.0.1:19092"), topics, [name])
    shutil.rmtree(folder, ignore_errors=True)


def _backends(embedded: bool, name: str, folder: Path) -> tuple[Log, Store]:
    if embedded:
        store = open_store(f"sqlite:///{folder}/v.db", name)
        return open_log(f"embedded:///{folder}/log.db"), store
    bootstrap = os.environ.get("LOGLANE_KAFKA", "127.0.0.1:19092")
    url = f"{harness.postgres_url()}?schema={name}"
    return open_log(f"kafka://{bootstrap}"), open_store(url, name)


def _create_accounts(store: Store, embedded: bool, name: str, folder: Path) -> None:
    if embedded:
        import sqlite3

        with sqlite3.connect(folder / "v.db") as conn:
            conn.execute(harness.ACCOUNTS_TABLE.replace('"{schema}".', ""))
        return
    import psycopg

    with psycopg.connect(harness.postgres_url(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{name}"')  # type: ignore[arg-type]
        conn.execute(harness.ACCOUNTS_TABLE.format(schema=name))  # type: ignore[arg-type]


def _py_spy(output: Path, rate: int) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "--pid", str(os.getpid()), "-r", str(rate)]
    command += ["--nonblocking", "-f", "raw", "-o", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let py-spy attach before the clock starts
    return process


def _print_profile(path: Path, top: int) -> None:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = [_frame(frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    print(f"{total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"--- {title}")
        for frame, samples in counter.most_common(top):
            print(f"{100 * samples / total:5.1f}%  {frame}")


def _frame(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func file.py`: lines merged, so a function is one row."""
    function, _, where = frame.partition(" (")
    return f"{function} {Path(where.split(':')[0]).name}"


if __name__ == "__main__":
    main()
