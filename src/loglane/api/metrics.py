"""Prometheus metrics of one API server, in a registry of its own (`/metrics` serves it).

loglane_api_commands_total{service,type,outcome}    accepted, replayed (same key again)
loglane_api_command_seconds{service,type,waited}    POST latency, waits included
loglane_api_waits_total{service,result}              done, rejected, failed, timeout
loglane_api_waiters{service}                         requests and reads waiting now

and the progress of the services it serves (lag, oldest unprocessed record, outbox; measured
in the background so a scrape answers within a second while a backend is down), and the
metrics of workers running in the same process: `loglane.metrics` lists both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loglane.api.runtime import ServiceRuntime
from loglane.metrics import REGISTRY as workers_registry
from loglane.metrics import Forwarded, ProgressSampler

logger = logging.getLogger("loglane.api")

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip


class ApiMetrics:
    def __init__(self, runtimes: Mapping[str, ServiceRuntime]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commands = Counter(
            "loglane_api_commands",
            "Commands posted over HTTP, by outcome (accepted, replayed).",
            ["service", "type", "outcome"],
            registry=self.registry,
        )
        self.command_seconds = Histogram(
            "loglane_api_command_seconds",
            "Time to answer a command POST, waiting included.",
            ["service", "type", "waited"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.waits = Counter(
            "loglane_api_waits",
            "Waits for a request's outcome, by result (done, rejected, failed, timeout).",
            ["service", "result"],
            registry=self.registry,
        )
        self.registry.register(_Waiters(runtimes))
        self.registry.register(Forwarded(workers_registry))
        self.progress = ProgressSampler(
            lambda: [(r.service, r.log, r.store) for r in runtimes.values() if r.is_open]
        )
        self.registry.register(self.progress)


class _Waiters(Collector):
    """HTTP requests waiting now, read from the watchers at scrape time."""

    def __init__(self, runtimes: Mapping[str, ServiceRuntime]) -> None:
        self._runtimes = runtimes

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        waiters = self._family()
        for runtime in self._runtimes.values():
            if runtime.is_open:
                waiters.add_metric([runtime.name], runtime.watcher.waiting)
        return [waiters]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "loglane_api_waiters",
            "HTTP requests waiting for an outcome or a position.",
            labels=["service"],
        )
