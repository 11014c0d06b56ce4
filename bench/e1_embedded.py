"""PRODUCT §6 E1: events/s of one worker process on the embedded stack, against a raw loop.

Both sides start from the same backlog of commands in an embedded log and do the same work per
event: read it, decode it, upsert a view row, emit an output event to `<service>.out`, and
commit the view rows with the input position; the raw side is a hand-written loop over plain
`sqlite3` and `json` with none of Loglane's machinery (no envelope parsing, no validation, no
outbox, no duplicate tracking, no request tracking).

A second raw loop adds by hand what Loglane's wire format and publishing exactly once take per
event when the views and the log are two files: it reads each command's CloudEvents headers
and gives each output headers of its own (a uuid5 id derived from the command's, its
correlation and causation ids), and it also writes each output to an outbox table in the
views' transaction, deleted by the next one, once the log holds it. The gap between the two
raw loops is that work's own cost; the rest of Loglane's gap is the framework's (P1's
`raw_loop.py --outbox` is the same on Kafka and PostgreSQL).

    .venv/bin/python bench/e1_embedded.py --events 50000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import msgpack
from rich.console import Console

from loglane.logs.embedded import EmbeddedLog
from loglane.runner import freeze_startup_objects
from loglane.stores.sqlite import SQLiteStore
from loglane.worker import Worker, ensure_topics
from report import print_medians, print_run
from workload import PARTITIONS, bench_service, commands

BATCH = 1000

bench = bench_service("bench")


def prepare_backlog(folder: Path, events: int) -> None:
    log = EmbeddedLog(folder / "log.db", synchronous="NORMAL")
    ensure_topics(log, [bench])
    for start in range(0, events, 5000):
        log.append(commands(bench, start, min(start + 5000, events)))
    log.close()


def run_loglane(folder: Path, events: int) -> float:
    log = EmbeddedLog(folder / "log.db", synchronous="NORMAL")
    store = SQLiteStore(folder / "bench.db")
    worker = Worker(bench, log, store, batch_size=BATCH)
    worker.start()
    freeze_startup_objects()  # as `loglane run` and `loglane worker` do
    started = time.perf_counter()
    while worker.handled < events:
        worker.run_once(timeout=0.1, send_ahead=True)  # as `Worker.run` makes its passes
    elapsed = time.perf_counter() - started
    worker.close()
    store.close()
    log.close()
    return events / elapsed


def run_raw(folder: Path, events: int, *, outbox: bool = False) -> float:
    """The same work by hand: what the SQLite calls alone cost; with `outbox`, each output
    event also goes through an outbox table in the views' file."""
    log = sqlite3.connect(folder / "log.db", isolation_level=None)
    log.execute("PRAGMA journal_mode = WAL")
    log.execute("PRAGMA synchronous = NORMAL")
    views = sqlite3.connect(folder / "raw.db", isolation_level=None)
    views.execute("PRAGMA journal_mode = WAL")
    views.execute("PRAGMA synchronous = FULL")  # as Loglane's store by default
    views.execute("CREATE TABLE items (key TEXT PRIMARY KEY, doc TEXT NOT NULL)")
    views.execute("CREATE TABLE positions (partition INTEGER PRIMARY KEY, offset INTEGER)")
    views.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, key, value, headers)")
    (in_id,) = log.execute("SELECT id FROM topics WHERE name = 'bench.in'").fetchone()
    (out_id,) = log.execute("SELECT id FROM topics WHERE name = 'bench.out'").fetchone()
    positions = dict.fromkeys(range(PARTITIONS), 0)
    handled = 0
    started = time.perf_counter()
    while handled < events:
        for partition in range(PARTITIONS):
            rows = log.execute(
                "SELECT offset, key, value, headers FROM records WHERE topic_id = ? "
                "AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (in_id, partition, positions[partition], BATCH // PARTITIONS),
            ).fetchall()
            if not rows:
                continue
            upserts, outputs = [], []
            now = datetime.now(UTC).isoformat().encode()
            for _, key, value, headers in rows:
                command = json.loads(value)
                document = json.dumps({"key": command["key"], "value": command["value"]})
                upserts.append((command["key"], document))
                if outbox:  # CloudEvents headers read, and written for the output
                    output_headers = _output_headers(dict(msgpack.unpackb(headers)), now)
                else:  # the command's, as they are
                    output_headers = headers
                outputs.append((key, document.encode(), output_headers))
            positions[partition] = rows[-1][0] + 1
            views.execute("BEGIN")
            views.executemany(
                "INSERT INTO items VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
                upserts,
            )
            views.execute(
                "INSERT OR REPLACE INTO positions VALUES (?, ?)", (partition, positions[partition])
            )
            if outbox:  # the last pass's rows are in the log: forget them, keep this one's
                views.execute("DELETE FROM outbox")
                views.executemany(
                    "INSERT INTO outbox (key, value, headers) VALUES (?, ?, ?)", outputs
                )
            views.execute("COMMIT")
            log.execute("BEGIN IMMEDIATE")
            (end,) = log.execute(
                "UPDATE partitions SET end_offset = end_offset + ? WHERE topic_id = ? "
                "AND partition = ? RETURNING end_offset",
                (len(outputs), out_id, partition),
            ).fetchone()
            now_ms = int(time.time() * 1000)
            log.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (out_id, partition, end - len(outputs) + i, key, value, headers, now_ms)
                    for i, (key, value, headers) in enumerate(outputs)
                ],
            )
            log.execute("COMMIT")
            handled += len(rows)
    elapsed = time.perf_counter() - started
    log.close()
    views.close()
    return events / elapsed


_OUTPUT_IDS = uuid.UUID("0b6f1e9c-2d4a-4c57-8f3e-7a1d5c9b2e60")  # the raw loop's uuid5 namespace


def _output_headers(cause: dict[str, bytes], now: bytes) -> bytes:
    """The packed CloudEvents headers of the output of the command whose headers are `cause`."""
    cause_id = cause["ce_id"]
    output_id = uuid.uuid5(_OUTPUT_IDS, f"bench/{cause_id.decode()}/0")
    return msgpack.packb(
        [
            ("ce_specversion", b"1.0"),
            ("ce_id", str(output_id).encode()),
            ("ce_source", b"bench"),
            ("ce_type", b"ValueSet"),
            ("ce_time", now),
            ("content-type", b"application/json"),
            ("ce_correlationid", cause.get("ce_correlationid") or cause_id),
            ("ce_causationid", cause_id),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    console = Console()
    contenders: dict[str, Callable[[Path, int], float]] = {
        "loglane": run_loglane,
        "raw sqlite3 loop": run_raw,
        "raw loop + outbox": partial(run_raw, outbox=True),
    }
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for run in range(args.runs):
        for name, runner in contenders.items():
            with tempfile.TemporaryDirectory(prefix="loglane-e1-") as folder:
                prepare_backlog(Path(folder), args.events)
                results[name].append(runner(Path(folder), args.events))
        print_run(console, run, results)
    print_medians(
        console,
        f"E1: {args.events:,} events, one worker process, median of {args.runs}",
        results,
        unit="events/s",
        baselines={"vs raw": "raw sqlite3 loop", "vs raw + outbox": "raw loop + outbox"},
    )


if __name__ == "__main__":
    main()
