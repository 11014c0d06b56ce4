"""PRODUCT §6 L1: HTTP command round trips (`POST ?wait`) on the embedded stack.

The server is a real `loglane run loglane.examples.shop` in its own process (API on uvicorn,
workers in threads, embedded log with its default `synchronous=FULL`, SQLite views). The
client, in this process, posts `CreateCustomer?wait=10` with fresh ids over keep-alive
connections and times each round trip: append (fsync) -> worker -> commit -> answer.

- latency: one client, one request at a time: p50 and p99 of the round trip;
- load: `--concurrency` clients at once: commands/s and the round trip under load.

Each run starts a fresh server in a fresh folder; the table shows the median of the runs.
Client and server share the machine's cores, so the load figures include the client's cost.

    .venv/bin/python bench/l1_http.py --requests 1000 --concurrency 32 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
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
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
TARGET_P50_MS = 5.0
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

    def __init__(self, folder: Path) -> None:
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
                f"embedded:///{folder}/log.db",
                "--db",
                f"sqlite:///{folder}/{{service}}.db",
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


async def round_trips(url: str, count: int, concurrency: int) -> Measurement:
    """Post `count` commands from `concurrency` clients; every one must come back done."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(count):
            queue.put_nowait(n)
        latencies: list[float] = []
        run = uuid.uuid4().hex[:8]

        async def post_until_empty() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post(
                    "/customers/commands/CreateCustomer",
                    params={"wait": 10},
                    json={"customer_id": f"{run}-{n}", "name": "Ada"},
                )
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200 or response.json()["status"] != "done":
                    raise RuntimeError(f"command {n}: {response.status_code} {response.text}")

        started = time.perf_counter()
        await asyncio.gather(*(post_until_empty() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Measurement(
        concurrency=concurrency,
        p50_ms=1000 * latencies[len(latencies) // 2],
        p99_ms=1000 * latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)],
        per_second=count / elapsed,
    )


def one_run(requests: int, concurrency: int) -> list[Measurement]:
    with tempfile.TemporaryDirectory(prefix="loglane-l1-") as folder:
        server = Server(Path(folder))
        try:
            asyncio.run(round_trips(server.url, 100, 1))  # warm up connections and caches
            return [
                asyncio.run(round_trips(server.url, requests, 1)),
                asyncio.run(round_trips(server.url, requests, concurrency)),
            ]
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="commands per measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the load test")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    runs = []
    for number in range(args.runs):
        console.print(f"run {number + 1}/{args.runs} ...")
        runs.append(one_run(args.requests, args.concurrency))
    table = Table(title=f"L1: POST ?wait round trips, embedded stack (median of {args.runs})")
    for column in ("clients", "p50 ms", "p99 ms", "p99/p50", "commands/s", "target"):
        table.add_column(column, justify="right")
    for index in range(2):
        rows = [run[index] for run in runs]
        p50 = statistics.median(row.p50_ms for row in rows)
        p99 = statistics.median(row.p99_ms for row in rows)
        rate = statistics.median(row.per_second for row in rows)
        target = (
            f"p50 <= {TARGET_P50_MS:g} ms: {'met' if p50 <= TARGET_P50_MS else 'missed'}; "
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
