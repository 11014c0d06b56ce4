"""PRODUCT §6 P1 (issue 9): Loglane against its peers on the same work, broker and PostgreSQL.

Every system drains the same backlog of commands (`--events`, 4 partitions, 10,000 keys,
~600-byte JSON bodies) from its own copy of the input topic: each command adds to its key's
row of a PostgreSQL table (`count + 1`, `total + amount`), emits one keyed output event, and
the system commits its progress. The systems, one process each:

    raw loop            confluent-kafka + psycopg 3, no framework (bench/peers/raw_loop.py)
    raw loop + outbox   the same, plus CloudEvents headers in and out and an outbox table
                        (`raw_loop.py --outbox`): what Loglane's wire format and its
                        no-lost-output guarantee cost without a framework
    FastStream          batch subscriber, asyncpg, manual ack (bench/peers/faststream_app.py)
    faust-streaming     an agent over stream.take, asyncpg (bench/peers/faust_app.py)
    Loglane tx[view]    `loglane worker`, a view read and put per command (loglane_app:by_view)
    Loglane tx.execute  `loglane worker`, one SQL upsert per command (loglane_app:by_sql)

The peers run from their own virtual environments (`bench/peers/install`), Loglane from the
repo's .venv. Rounds are interleaved (round 1 runs every system, then round 2...), the order
rotating by one each round. After each run the table is checked against the fold of the input
and the output topic for one event per command.

    scripts/kafka start && scripts/postgres start && bench/peers/install
    .venv/bin/python bench/peers/run.py --events 100000 --rounds 3
    .venv/bin/python bench/peers/run.py --embedded --events 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import harness
import psycopg
from harness import PEERS, REPO
from procstat import cpu_seconds, memory_mb
from rich.console import Console
from rich.markup import escape
from rich.table import Table

PARTITIONS = 4


@dataclass(frozen=True, slots=True)
class Target:
    """Where one run of one system works: its topics, consumer group, schema and table."""

    name: str  # topics <name>.in / <name>.out, consumer group, PostgreSQL schema
    bootstrap: str
    postgres: str
    batch: int

    @property
    def topic_in(self) -> str:
        return f"{self.name}.in"

    @property
    def topic_out(self) -> str:
        return f"{self.name}.out"


@dataclass(frozen=True, slots=True, kw_only=True)
class System:
    name: str
    slug: str
    argv: Callable[[Target], list[str]]
    python: Path  # must exist for the system to run
    guarantees: str
    tables: tuple[str, ...] = ()  # created by the runner before the worker starts
    rows: str = 'SELECT key, count, total FROM "{schema}".accounts'


def peer(script: str, venv: str, *extra: str) -> Callable[[Target], list[str]]:
    def argv(t: Target) -> list[str]:
        return [
            str(PEERS / venv / "bin" / "python"),
            str(PEERS / script),
            *("--bootstrap", t.bootstrap, "--input", t.topic_in, "--output", t.topic_out),
            *("--group", t.name, "--postgres-url", t.postgres, "--schema", t.name),
            *("--batch", str(t.batch), *extra),
        ]

    return argv


def loglane(attribute: str) -> Callable[[Target], list[str]]:
    def argv(t: Target) -> list[str]:
        return [
            *os.environ.get("PEERS_LOGLANE_PREFIX", "").split(),  # e.g. a profiler's command
            str(REPO / ".venv" / "bin" / "loglane"),
            *("worker", f"{PEERS / 'loglane_app.py'}:{attribute}", "--service", t.name),
            *("--log", f"kafka://{t.bootstrap}", "--db", f"{t.postgres}?schema={t.name}"),
            *("--batch-size", str(t.batch)),
        ]

    return argv


LOGLANE_GUARANTEES = (
    "exactly-once effect (positions in the view txn, fenced); outbox: no lost output, "
    "copies dropped downstream by id; DLQ"
)


def systems(faststream_broker: str) -> list[System]:
    return [
        System(
            name="raw loop",
            slug="raw",
            argv=peer("raw_loop.py", ".venv-raw"),
            python=PEERS / ".venv-raw" / "bin" / "python",
            guarantees="table exactly once (offsets in its txn, seek on assign); outputs at "
            "least once; no DLQ",
            tables=(
                harness.ACCOUNTS_TABLE,
                'CREATE TABLE "{schema}".offsets (topic TEXT, partition INT, next BIGINT, '
                "PRIMARY KEY (topic, partition))",
            ),
        ),
        System(
            name="raw loop + outbox",
            slug="raw_outbox",
            argv=peer("raw_loop.py", ".venv-raw", "--outbox"),
            python=PEERS / ".venv-raw" / "bin" / "python",
            guarantees="as the raw loop; outputs in an outbox in the table's txn, CloudEvents "
            "with ids derived from the command's; no DLQ",
            tables=(
                harness.ACCOUNTS_TABLE,
                'CREATE TABLE "{schema}".offsets (topic TEXT, partition INT, next BIGINT, '
                "PRIMARY KEY (topic, partition))",
                'CREATE TABLE "{schema}".outbox (seq BIGSERIAL PRIMARY KEY, key BYTEA, '
                "value BYTEA NOT NULL, id TEXT NOT NULL, correlation_id TEXT NOT NULL, "
                "causation_id TEXT NOT NULL)",
            ),
        ),
        System(
            name=f"FastStream ({faststream_broker})",
            slug="faststream",
            argv=peer("faststream_app.py", ".venv-faststream", "--broker", faststream_broker),
            python=PEERS / ".venv-faststream" / "bin" / "python",
            guarantees="at least once (ack after commit): a replay adds again, re-emits; no DLQ",
            tables=(harness.ACCOUNTS_TABLE,),
        ),
        System(
            name="faust-streaming",
            slug="faust",
            argv=peer("faust_app.py", ".venv-faust"),
            python=PEERS / ".venv-faust" / "bin" / "python",
            guarantees="at least once (periodic commit): a replay adds again, re-emits; no DLQ",
            tables=(harness.ACCOUNTS_TABLE,),
        ),
        System(
            name="Loglane tx[view]",
            slug="loglane",
            argv=loglane("by_view"),
            python=REPO / ".venv" / "bin" / "python",
            guarantees=LOGLANE_GUARANTEES,
            rows="SELECT key, (doc->>'count')::bigint, (doc->>'total')::bigint "
            'FROM "{schema}".accounts',
        ),
        System(
            name="Loglane tx.execute",
            slug="loglane_sql",
            argv=loglane("by_sql"),
            python=REPO / ".venv" / "bin" / "python",
            guarantees=LOGLANE_GUARANTEES,
            tables=(harness.ACCOUNTS_TABLE,),
        ),
    ]


@dataclass(frozen=True, slots=True)
class Result:
    rate: float
    seconds: float
    cpu: float  # the worker process, over the measured window
    peak_rss_mb: float
    problems: str  # "" when the table and the outputs are right


def run_system(
    system: System,
    target: Target,
    backlog: harness.Backlog,
    logs: Path,
    timeout: float,
) -> Result:
    events = len(backlog.records)
    with psycopg.connect(target.postgres, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{target.name}" CASCADE')  # type: ignore[arg-type]
        if system.tables:
            conn.execute(f'CREATE SCHEMA "{target.name}"')  # type: ignore[arg-type]
            for ddl in system.tables:
                conn.execute(ddl.format(schema=target.name))  # type: ignore[arg-type]
    log_path = logs / f"{target.name}.log"
    workdir = logs / target.name
    workdir.mkdir()
    env = {**os.environ, "PEERS_SERVICE": target.name, "PEERS_PARTITIONS": str(PARTITIONS)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            system.argv(target), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    readings: dict[str, float] = {}

    def alive() -> None:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"exited with {process.returncode}: " + " | ".join(tail))

    def at_start() -> None:
        readings["cpu"] = cpu_seconds(process.pid)

    def at_end() -> None:
        readings["cpu"] = cpu_seconds(process.pid) - readings["cpu"]
        readings["rss"] = memory_mb(process.pid, "VmHWM")

    try:
        drain = harness.watch_drain(
            target.bootstrap,
            group=target.name,
            topic_in=target.topic_in,
            topic_out=target.topic_out,
            partitions=PARTITIONS,
            events=events,
            alive=alive,
            at_start=at_start,
            at_end=at_end,
            timeout=timeout,
        )
    finally:
        stop(process)
    outputs = harness.check_outputs(target.bootstrap, target.topic_out, events)
    wrong = harness.wrong_rows(
        target.postgres, system.rows.format(schema=target.name), backlog.fold
    )
    dead = harness.topic_size(target.bootstrap, f"{target.name}.dlq")
    problems = [
        f"{wrong} wrong rows" if wrong else "",
        f"{outputs.duplicates} duplicate outputs" if outputs.duplicates else "",
        f"{outputs.missing} missing outputs" if outputs.missing else "",
        f"{dead} dead letters" if dead else "",
    ]
    return Result(
        rate=drain.rate,
        seconds=drain.seconds,
        cpu=readings["cpu"],
        peak_rss_mb=readings["rss"],
        problems=", ".join(p for p in problems if p),
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s: only the process this runner started."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cleanup(target: Target) -> None:
    harness.delete_topics(
        target.bootstrap,
        [target.topic_in, target.topic_out, f"{target.name}.dlq"],
        groups=[target.name],
    )
    harness.drop_schema(target.postgres, target.name)


def print_table(
    console: Console,
    title: str,
    chosen: list[System],
    results: dict[str, list[Result | str]],
) -> None:
    medians = {
        s.slug: statistics.median(r.rate for r in ok)
        for s in chosen
        if (ok := [r for r in results[s.slug] if isinstance(r, Result)])
    }
    table = Table(title=title)
    for heading in (
        "system",
        "events/s",
        "min-max",
        "vs raw",
        "vs raw + outbox",
        "vs FastStream",
        "worker CPU s",
        "peak RSS MB",
        "checks",
        "guarantees",
    ):
        table.add_column(
            heading, justify="left" if heading in ("system", "checks", "guarantees") else "right"
        )
    for system in chosen:
        runs = results[system.slug]
        ok = [r for r in runs if isinstance(r, Result)]
        failures = [r for r in runs if isinstance(r, str)]
        checks = sorted({r.problems for r in ok if r.problems}) + failures
        if not ok:
            table.add_row(
                escape(system.name),
                "—",
                "—",
                "—",
                "—",
                "—",
                "—",
                "—",
                "; ".join(checks) or "not run",
                system.guarantees,
            )
            continue
        median = medians[system.slug]
        rates = [r.rate for r in ok]

        ratios = [
            f"{median / medians[base]:.2f}x" if base in medians else "—"
            for base in ("raw", "raw_outbox", "faststream")
        ]
        table.add_row(
            escape(system.name),
            f"{median:,.0f}",
            f"{min(rates):,.0f}-{max(rates):,.0f}",
            *ratios,
            f"{statistics.median(r.cpu for r in ok):.1f}",
            f"{max(r.peak_rss_mb for r in ok):.0f}",
            "; ".join(checks) or "ok",
            system.guarantees,
        )
    console.print(table)
    console.print(
        "events/s: commands from the first output event to the group's last committed offset "
        "(Kafka polled every 50 ms). Worker CPU s: user+sys of the worker process over that "
        "window (median). Peak RSS: its VmHWM at the end of the drain (max over rounds). "
        "Checks: table = fold of the input, one output per command, no dead letters."
    )


def run_embedded(events: int, rounds: int) -> None:
    """E1 is the embedded comparison: Loglane on the embedded log + SQLite vs a sqlite3 loop."""
    subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "e1_embedded.py"),
            "--events",
            str(events),
            "--runs",
            str(rounds),
        ],
        cwd=REPO / "bench",
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="records per batch, every system")
    parser.add_argument("--bootstrap", default=os.environ.get("LOGLANE_KAFKA", "127.0.0.1:19092"))
    parser.add_argument("--postgres-url", help="default: LOGLANE_PG, else scripts/postgres url")
    parser.add_argument(
        "--systems",
        default="raw,raw_outbox,faststream,faust,loglane,loglane_sql",
        help="comma-separated: raw, raw_outbox, faststream, faust, loglane, loglane_sql",
    )
    parser.add_argument(
        "--faststream-broker", choices=("aiokafka", "confluent"), default="aiokafka"
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="instead: Loglane on its embedded stack vs a raw sqlite3 loop (E1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep topics and schemas")
    args = parser.parse_args()
    if args.embedded:
        run_embedded(args.events, args.rounds)
        return
    postgres = args.postgres_url or os.environ.get("LOGLANE_PG") or harness.postgres_url()
    console = Console(width=max(Console().width, 200))
    wanted = args.systems.split(",")
    chosen = [s for s in systems(args.faststream_broker) if s.slug in wanted]
    results: dict[str, list[Result | str]] = {s.slug: [] for s in chosen}
    for system in chosen:
        if not system.python.exists():
            results[system.slug].append("not installed: run bench/peers/install")
    runnable = [s for s in chosen if s.python.exists()]
    if not runnable:
        raise SystemExit("no system to run is installed: run bench/peers/install first")
    logs = REPO / "bench" / "results" / f"peers-{datetime.now():%Y%m%d-%H%M%S}"
    logs.mkdir(parents=True)
    backlog = harness.make_backlog(args.events)
    console.print(
        f"backlog: {args.events:,} commands, mean body {backlog.mean_body:.0f} B; "
        f"worker logs in {logs.relative_to(REPO)}"
    )
    timeout = max(120.0, args.events / 200)
    for round_ in range(args.rounds):
        prefix = f"p9{uuid.uuid4().hex[:6]}"
        targets = {
            s.slug: Target(f"{prefix}_{s.slug}", args.bootstrap, postgres, args.batch)
            for s in runnable
        }
        harness.create_topics(
            args.bootstrap,
            [n for t in targets.values() for n in (t.topic_in, t.topic_out)],
            PARTITIONS,
        )
        for target in targets.values():
            harness.produce(args.bootstrap, target.topic_in, backlog.records)
        order = runnable[round_ % len(runnable) :] + runnable[: round_ % len(runnable)]
        for system in order:
            target = targets[system.slug]
            try:
                result: Result | str = run_system(system, target, backlog, logs, timeout)
            except Exception as exc:
                result = f"failed: {exc}"
            results[system.slug].append(result)
            if isinstance(result, Result):
                console.print(
                    f"round {round_ + 1} {escape(system.name)}: {result.rate:,.0f}/s "
                    f"({result.seconds:.1f} s), CPU {result.cpu:.1f} s, "
                    f"peak RSS {result.peak_rss_mb:.0f} MB, {result.problems or 'checks ok'}"
                )
            else:
                console.print(f"round {round_ + 1} {escape(system.name)}: {result}")
            if not args.keep:
                cleanup(target)
            time.sleep(1)
    print_table(
        console,
        f"P1 peers: {args.events:,} commands, {PARTITIONS} partitions, {harness.KEYS:,} keys, "
        f"~{backlog.mean_body:.0f} B bodies, Kafka + PostgreSQL, one worker process each, "
        f"median of {args.rounds} round(s)",
        chosen,
        results,
    )


if __name__ == "__main__":
    main()
