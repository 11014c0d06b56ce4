"""The service page: per partition the log's end, the stored position, the lag, the outbox,
and how many events per second the workers apply.

Throughput is the change of the stored positions between two samples: the console keeps the
samples it took in the last `WINDOW` seconds (the page refreshes its table every two
seconds, and each refresh takes one), so the figure is the rate over up to that window. The
first view of a page has one sample, and no rate yet.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loglane.console.context import Console
from loglane.dlq import pending_count
from loglane.records import TopicPartition
from loglane.status import PartitionStatus, service_status

if TYPE_CHECKING:
    from loglane.api.runtime import ServiceRuntime

WINDOW = 10.0

Sample = tuple[float, dict[TopicPartition, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionRow:
    status: PartitionStatus
    per_second: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceFigures:
    rows: list[PartitionRow]
    lag: int
    outbox: int
    per_second: float | None
    dead_letters: int
    sampled_over: float | None


class Throughput:
    """Recent samples of each service's stored positions, and the rates between them."""

    def __init__(self, window: float = WINDOW) -> None:
        self._window = window
        self._samples: dict[str, deque[Sample]] = {}

    def rates(
        self, service: str, positions: dict[TopicPartition, int], now: float
    ) -> tuple[dict[TopicPartition, float], float | None]:
        """Record a sample; the rate per partition since the oldest sample kept, and over
        how many seconds (None, and no rates, without an earlier sample)."""
        samples = self._samples.setdefault(service, deque())
        while len(samples) > 1 and now - samples[1][0] >= self._window:
            samples.popleft()
        rates: dict[TopicPartition, float] = {}
        span: float | None = None
        if samples and now > samples[0][0]:
            then, earlier = samples[0]
            span = now - then
            for tp, position in positions.items():
                rates[tp] = max(position - earlier.get(tp, 0), 0) / span
        samples.append((now, dict(positions)))
        return rates, span


def figures(runtime: ServiceRuntime, throughput: Throughput) -> ServiceFigures:
    status = service_status(runtime.service, runtime.log, runtime.store)
    stored = {row.partition: row.stored or 0 for row in status.partitions}
    rates, span = throughput.rates(runtime.name, stored, time.monotonic())
    rows = [
        PartitionRow(status=row, per_second=rates.get(row.partition) if span else None)
        for row in status.partitions
    ]
    return ServiceFigures(
        rows=rows,
        lag=status.lag,
        outbox=sum(row.outbox for row in status.partitions),
        per_second=sum(rates.values()) if span else None,
        dead_letters=pending_count(runtime.log, runtime.store, runtime.service),
        sampled_over=span,
    )


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)
    throughput = Throughput()

    async def read(name: str) -> tuple[ServiceRuntime, ServiceFigures]:
        runtime = console.runtime(name)
        await runtime.open()
        return runtime, await run_in_threadpool(figures, runtime, throughput)

    @routes.get("/services/{name}")
    async def service_page(request: Request, name: str) -> Response:
        runtime, found = await read(name)
        service = runtime.service
        return console.page(
            request,
            "service.html",
            service=service,
            figures=found,
            sources=service.sources,
        )

    @routes.get("/services/{name}/partitions")
    async def partitions_fragment(request: Request, name: str) -> Response:
        runtime, found = await read(name)
        return console.page(request, "_partitions.html", service=runtime.service, figures=found)

    return routes
