"""Prometheus metrics of one API server, in a registry of its own (`/metrics` serves it).

loglane_api_commands_total{service,type,outcome}    accepted, replayed (same key again)
loglane_api_command_seconds{service,type,waited}    POST latency, waits included
loglane_api_waits_total{service,result}              done, rejected, failed, timeout
loglane_api_waiters{service}                         requests and reads waiting now
loglane_partition_lag{service,topic,partition}       log end offset - stored position
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loglane.api.runtime import ServiceRuntime
from loglane.records import TopicPartition

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
        self.registry.register(_ProgressCollector(runtimes))


class _ProgressCollector(Collector):
    """Lag and waiters, read at scrape time from the log, the stores and the watchers."""

    def __init__(self, runtimes: Mapping[str, ServiceRuntime]) -> None:
        self._runtimes = runtimes

    def describe(self) -> Iterable[Metric]:
        return [self._lag(), self._waiters()]

    def collect(self) -> Iterable[Metric]:
        lag = self._lag()
        waiters = self._waiters()
        for runtime in self._runtimes.values():
            if not runtime.is_open:
                continue
            waiters.add_metric([runtime.name], runtime.watcher.waiting)
            try:
                positions = runtime.store.positions(runtime.name)
                for topic in runtime.service.topics:
                    for partition, offsets in runtime.log.offsets(topic).items():
                        stored = positions.get(TopicPartition(topic, partition), 0)
                        lag.add_metric(
                            [runtime.name, topic, str(partition)], max(offsets.end - stored, 0)
                        )
            except Exception as exc:
                # a scrape must not fail because one backend is down; /readyz reports that
                logger.warning("cannot measure the lag of %s: %s", runtime.name, exc)
        return [lag, waiters]

    @staticmethod
    def _lag() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "loglane_partition_lag",
            "Records in the log that the service's workers have not applied yet.",
            labels=["service", "topic", "partition"],
        )

    @staticmethod
    def _waiters() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "loglane_api_waiters",
            "HTTP requests waiting for an outcome or a position.",
            labels=["service"],
        )
