"""PRODUCT §6 L1: HTTP command round trips (`POST ?wait`), embedded or on Kafka + PostgreSQL.

The server is a real `loglane run loglane.examples.shop` in its own process (API on uvicorn,
workers in threads). By default it runs on the embedded stack (embedded log with its default
`synchronous=FULL`, SQLite views); with `--kafka`, on the Kafka broker and PostgreSQL that
`scripts/kafka start` and `scripts/postgres start` run (LOGLANE_KAFKA and LOGLANE_PG name
others), with a fresh schema per run and the shop's topics deleted after it. The client, in
this process, posts `CreateCustomer?wait=10` with fresh ids over keep-alive HTTP/1.1
connections and times each round trip: append -> worker -> commit -> answer.

- latency: one client, one request at a time: p50 and p99 of the round trip;
- load: `--concurrency` clients at once: commands/s and the round trip under load.

Each run starts a fresh server in a fresh folder; the table shows the median of the runs.
Client and server share the machine's cores, so the load figures include the client's cost.

    .venv/bin/python bench/l1_http.py --requests 1000 --concurrency 32 --runs 3
    .venv/bin/python bench/l1_http.py --synchronous normal   # the log without fsyncs
    .venv/bin/python bench/l1_http.py --kafka                # Kafka + PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from loglane.examples import shop
from servers import delete_topics, postgres_url

ROOT = Path(__file__).resolve().parent.parent
TARGET_P50_MS = {"embedded": 5.0, "kafka": 25.0}
TARGET_P99_RATIO = 4.0


@dataclass(frozen=True)
class Measurement:
    concurrency: int
    p50_ms: float
    p99_ms: float
    per_second: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Server:
    """`loglane run` of the example shop in a child process, on a fresh folder."""

    def __init__(self, folder: Path, log_url: str, db_url: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.output = (folder / "server.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loglane",
                "run",
                "loglane.examples.shop",
                "--log",
                log_url,
                "--db",
                db_url,
                "--port",
                self.url.rsplit(":", 1)[1],
                "--log-format",
                "json",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {folder / 'server.log'}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.output.close()


class Connection:
    """A bare HTTP/1.1 keep-alive connection. httpx's pool, not the server, capped an
    earlier version of this benchmark at ~300 requests/s with 32 clients (even against a
    trivial FastAPI app), so the load side speaks the few bytes it needs itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def round_trips(url: str, count: int, concurrency: int) -> Measurement:
    """Post `count` commands from `concurrency` clients; every one must come back done."""
    run = uuid.uuid4().hex[:8]
    numbers = iter(range(count))
    latencies: list[float] = []
    connections = [await Connection.open(url) for _ in range(concurrency)]

    async def post_until_done(connection: Connection) -> None:
        for n in numbers:
            body = json.dumps({"customer_id": f"{run}-{n}", "name": "Ada"}).encode()
            started = time.perf_counter()
            status, answer = await connection.post(
                "/customers/commands/CreateCustomer?wait=10", body
            )
            latencies.append(time.perf_counter() - started)
            if status != 200 or json.loads(answer)["status"] != "done":
                raise RuntimeError(f"command {n}: {status} {answer!r}")

    started = time.perf_counter()
    try:
        await asyncio.gather(*(post_until_done(connection) for connection in connections))
    finally:
        for connection in connections:
            connection.close()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Measurement(
        concurrency=concurrency,
        p50_ms=1000 * latencies[len(latencies) // 2],
        p99_ms=1000 * latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)],
        per_second=count / elapsed,
    )


def one_run(requests: int, concurrency: int, synchronous: str, kafka: bool) -> list[Measurement]:
    with tempfile.TemporaryDirectory(prefix="loglane-l1-") as folder:
        if kafka:
            schema = f"l1_{uuid.uuid4().hex[:8]}_{{service}}"
            log_url = f"kafka://{os.environ.get('LOGLANE_KAFKA', '127.0.0.1:19092')}"
            db_url = f"{postgres_url()}?schema={schema}"
        else:
            log_url = f"embedded:///{folder}/log.db?synchronous={synchronous}"
            db_url = f"sqlite:///{folder}/{{service}}.db"
        server = Server(Path(folder), log_url, db_url)
        try:
            asyncio.run(round_trips(server.url, 100, 1))  # warm up connections and caches
            return [
                asyncio.run(round_trips(server.url, requests, 1)),
                asyncio.run(round_trips(server.url, requests, concurrency)),
            ]
        finally:
            server.stop()
            if kafka:
                clean_up_kafka(log_url.removeprefix("kafka://"), schema)


def clean_up_kafka(bootstrap: str, schema: str) -> None:
    """Delete the shop's topics and drop the run's schemas."""
    with psycopg.connect(postgres_url(), autocommit=True) as db:
        for service in (shop.customers, shop.orders):
            delete_topics(bootstrap, service)
            name = schema.replace("{service}", service.name)
            db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="commands per measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the load test")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--synchronous",
        choices=["full", "normal"],
        default="full",
        help="the embedded log's fsync mode: full (default; a 202 survives power loss) or "
        "normal (survives a crash of the process, not of the machine)",
    )
    parser.add_argument(
        "--kafka",
        action="store_true",
        help="run on Kafka + PostgreSQL (scripts/kafka start, scripts/postgres start)",
    )
    args = parser.parse_args()
    console = Console()
    runs = []
    for number in range(args.runs):
        console.print(f"run {number + 1}/{args.runs} ...")
        runs.append(one_run(args.requests, args.concurrency, args.synchronous, args.kafka))
    stack = "kafka" if args.kafka else "embedded"
    setup = "Kafka + PostgreSQL" if args.kafka else f"embedded, log synchronous={args.synchronous}"
    table = Table(title=f"L1: POST ?wait round trips, {setup} (median of {args.runs})")
    for column in ("clients", "p50 ms", "p99 ms", "p99/p50", "commands/s", "target"):
        table.add_column(column, justify="right")
    for index in range(2):
        rows = [run[index] for run in runs]
        p50 = statistics.median(row.p50_ms for row in rows)
        p99 = statistics.median(row.p99_ms for row in rows)
        rate = statistics.median(row.per_second for row in rows)
        target = (
            f"p50 <= {TARGET_P50_MS[stack]:g} ms: "
            f"{'met' if p50 <= TARGET_P50_MS[stack] else 'missed'}; "
            f"p99 <= {TARGET_P99_RATIO:g}x p50: "
            f"{'met' if p99 <= TARGET_P99_RATIO * p50 else 'missed'}"
            if index == 0
            else "-"
        )
        cells = (f"{p50:.2f}", f"{p99:.2f}", f"{p99 / p50:.1f}", f"{rate:,.0f}")
        table.add_row(str(rows[0].concurrency), *cells, target)
    console.print(table)


if __name__ == "__main__":
    main()
