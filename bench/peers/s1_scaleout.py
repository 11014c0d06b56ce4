"""PRODUCT §6 S1: one against two `loglane worker` processes of one service on Kafka.

The peers' `tx[view]` service with 6 partitions drains `--events` commands from Kafka into
PostgreSQL with 1, then 2 worker processes (rounds interleaved). The backlog is written once
the group has split the partitions evenly (else one process would drain alone for the seconds
a cooperative rebalance takes). The window opens at the first poll after it is fully written
(commands handled before are not counted) and closes at the group's last committed offset.
Over it, the CPU seconds (user+sys, /proc/<pid>/stat) of each part: every worker process, the
Kafka broker's JVM, all PostgreSQL processes, this harness (the poller), and the machine as a
whole. On 2 shared cores the gain from a second worker is bounded by what the broker and the
database need; the table shows where it goes.

    scripts/kafka start && scripts/postgres start
    .venv/bin/python bench/peers/s1_scaleout.py --events 100000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import harness
from confluent_kafka.admin import AdminClient
from harness import PEERS, REPO
from procstat import cpu_seconds, kafka_broker_pids, machine_busy_seconds, postgres_pids
from rich.console import Console
from rich.table import Table

PARTITIONS = 6
ROWS = "SELECT key, (doc->>'count')::bigint, (doc->>'total')::bigint FROM \"{schema}\".accounts"


@dataclass
class Readings:
    """CPU seconds of each part at one instant."""

    workers: list[float]
    broker: float
    postgres: dict[int, float]
    harness: float
    machine: float

    @classmethod
    def now(cls, workers: list[int]) -> Readings:
        times = os.times()
        return cls(
            workers=[cpu_seconds(pid) for pid in workers],
            broker=sum(cpu_seconds(pid) for pid in kafka_broker_pids()),
            postgres={pid: cpu_seconds(pid) for pid in postgres_pids()},
            harness=times.user + times.system,
            machine=machine_busy_seconds(),
        )


@dataclass
class Result:
    processes: int
    rate: float
    seconds: float
    workers: list[float]
    broker: float
    postgres: float
    harness: float
    machine: float
    split: list[int] = field(default_factory=list)  # partitions per member
    problems: str = ""


def run(
    processes: int, bootstrap: str, postgres: str, backlog: harness.Backlog, logs: Path
) -> Result:
    name = f"s1_{uuid.uuid4().hex[:6]}_{processes}"
    events = len(backlog.records)
    harness.create_topics(bootstrap, [f"{name}.in", f"{name}.out"], PARTITIONS)
    env = {**os.environ, "PEERS_SERVICE": name, "PEERS_PARTITIONS": str(PARTITIONS)}
    argv = [
        str(REPO / ".venv" / "bin" / "loglane"),
        "worker",
        f"{PEERS / 'loglane_app.py'}:by_view",
        "--service",
        name,
        "--log",
        f"kafka://{bootstrap}",
        "--db",
        f"{postgres}?schema={name}",
    ]
    workers = []
    for i in range(processes):
        with (logs / f"{name}-{i}.log").open("wb") as log:
            workers.append(
                subprocess.Popen(argv, cwd=logs, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
    pids = [w.pid for w in workers]
    marks: dict[str, Readings] = {}
    split: list[int] = []

    def alive() -> None:
        for worker in workers:
            if worker.poll() is not None:
                raise RuntimeError(f"worker {worker.pid} exited with {worker.returncode}")

    def at_end() -> None:
        marks["end"] = Readings.now(pids)
        split.extend(assignment(bootstrap, name))

    try:
        # The partitions are split before the backlog arrives, or one process would drain
        # alone while the group rebalances (cooperative-sticky takes seconds to hand over).
        wait_for_split(bootstrap, name, processes, alive)
        harness.produce(bootstrap, f"{name}.in", backlog.records)
        drain = harness.watch_drain(
            bootstrap,
            group=name,
            topic_in=f"{name}.in",
            topic_out=f"{name}.out",
            partitions=PARTITIONS,
            events=events,
            alive=alive,
            at_start=lambda: marks.__setitem__("start", Readings.now(pids)),
            at_end=at_end,
            timeout=max(120.0, events / 200),
        )
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    outputs = harness.check_outputs(bootstrap, f"{name}.out", events)
    wrong = harness.wrong_rows(postgres, ROWS.format(schema=name), backlog.fold)
    harness.delete_topics(bootstrap, [f"{name}.in", f"{name}.out", f"{name}.dlq"], [name])
    harness.drop_schema(postgres, name)
    start, end = marks["start"], marks["end"]
    problems = [
        f"{wrong} wrong rows" if wrong else "",
        f"{outputs.duplicates} duplicate outputs" if outputs.duplicates else "",
        f"{outputs.missing} missing outputs" if outputs.missing else "",
    ]
    return Result(
        processes=processes,
        rate=drain.rate,
        seconds=drain.seconds,
        workers=[b - a for a, b in zip(start.workers, end.workers, strict=True)],
        broker=end.broker - start.broker,
        postgres=sum(cpu - start.postgres.get(pid, 0.0) for pid, cpu in end.postgres.items()),
        harness=end.harness - start.harness,
        machine=end.machine - start.machine,
        split=split,
        problems=", ".join(p for p in problems if p),
    )


def members(bootstrap: str, group: str) -> list[list[int]]:
    """The partitions each member of `group` holds, per member."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    (description,) = [f.result() for f in admin.describe_consumer_groups([group]).values()]
    return [
        sorted(tp.partition for tp in member.assignment.topic_partitions)
        for member in description.members
    ]


def assignment(bootstrap: str, group: str) -> list[int]:
    return sorted(len(partitions) for partitions in members(bootstrap, group))


def wait_for_split(bootstrap: str, group: str, count: int, alive: Callable[[], None]) -> None:
    """Until each of `count` members holds an equal share of the partitions."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        alive()
        held = members(bootstrap, group)
        if len(held) == count and all(len(p) == PARTITIONS // count for p in held):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{count} workers did not split {group}'s partitions within 90 s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bootstrap", default=os.environ.get("LOGLANE_KAFKA", "127.0.0.1:19092"))
    parser.add_argument("--postgres-url", help="default: LOGLANE_PG, else scripts/postgres url")
    args = parser.parse_args()
    postgres = args.postgres_url or os.environ.get("LOGLANE_PG") or harness.postgres_url()
    console = Console(width=max(Console().width, 160))
    logs = REPO / "bench" / "results" / f"s1-{datetime.now():%Y%m%d-%H%M%S}"
    logs.mkdir(parents=True)
    backlog = harness.make_backlog(args.events)
    results: dict[int, list[Result]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        for processes in (1, 2):
            result = run(processes, args.bootstrap, postgres, backlog, logs)
            results[processes].append(result)
            console.print(
                f"round {round_ + 1}, {processes} process(es): {result.rate:,.0f}/s, partitions "
                f"{result.split}, {result.problems or 'checks ok'}"
            )
    table = Table(
        title=f"S1: {args.events:,} commands, {PARTITIONS} partitions, Kafka + "
        f"PostgreSQL, median of {args.rounds} round(s); CPU seconds over the drain"
    )
    for heading in (
        "workers",
        "events/s",
        "drain s",
        "partitions each",
        "worker CPU s (each)",
        "broker CPU s",
        "PostgreSQL CPU s",
        "harness CPU s",
        "machine busy s",
        "of 2 cores",
    ):
        table.add_column(heading, justify="right")
    base = statistics.median(r.rate for r in results[1])
    for processes, runs in results.items():

        def median(value: Callable[[Result], float], runs: list[Result] = runs) -> float:
            return statistics.median(value(r) for r in runs)

        rate = median(lambda r: r.rate)
        seconds = median(lambda r: r.seconds)
        each = [statistics.median(r.workers[i] for r in runs) for i in range(processes)]
        machine = median(lambda r: r.machine)
        table.add_row(
            str(processes),
            f"{rate:,.0f} ({rate / base:.2f}x)",
            f"{seconds:.1f}",
            "/".join(str(n) for n in runs[-1].split),
            " + ".join(f"{c:.1f}" for c in each),
            f"{median(lambda r: r.broker):.1f}",
            f"{median(lambda r: r.postgres):.1f}",
            f"{median(lambda r: r.harness):.1f}",
            f"{machine:.1f}",
            f"{100 * machine / (2 * seconds):.0f}%",
        )
    console.print(table)
    console.print(
        "machine busy s: all non-idle CPU time of the machine over the window; "
        "'of 2 cores' is that over 2 x the drain time. Worker startup and group "
        "joining are outside the window: the backlog is written once every process holds its "
        "share, and the window opens when it is fully written (commands handled before that "
        "are not counted)."
    )


if __name__ == "__main__":
    main()
