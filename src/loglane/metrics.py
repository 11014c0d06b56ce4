"""Prometheus metrics of the workers in this process, in a registry of their own (`REGISTRY`).

Counted by the workers as they go:

    loglane_events_total{service,outcome}             handled: done, rejected, failed, duplicate
    loglane_handler_seconds{service,type}             one handler call, retries apart
    loglane_handler_retries_total{service,type}       attempts that failed and were retried
    loglane_handler_reruns_total{service,type}        coroutine handlers run again: a handler
                                                      of another partition changed a row
                                                      they read while they ran
    loglane_dead_letters_total{service}               records sent to the service's DLQ
    loglane_batch_records{service}                    records per store transaction
    loglane_commit_seconds{service}                   writing and committing one transaction
    loglane_batch_conflicts_total{service}            transactions run again after a conflict

Sampled by a `ProgressSampler` in the background, so a scrape never waits long on a backend
(one that is down leaves the last sample, and its age says so); `/metrics` of the API serves
them too:

    loglane_partition_lag{service,topic,partition}          records not yet applied
    loglane_partition_oldest_unprocessed_seconds{service,topic,partition}
    loglane_partition_outbox{service,topic,partition}       committed rows not yet forgotten
    loglane_partition_parked_keys{service,topic,partition}  keys waiting behind a dead letter
    loglane_progress_sample_age_seconds{service}            how old those three figures are
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loglane.logs.base import Log
from loglane.records import TopicPartition
from loglane.service import Service
from loglane.stores.base import Store

logger = logging.getLogger("loglane.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
"""The workers' metrics; `/metrics` of a worker process (and of `loglane run`) serves it."""

_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
_RECORDS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

OUTCOMES = ("done", "rejected", "failed", "duplicate")
EVENTS = Counter(
    "loglane_events",
    "Input records a worker finished with, by outcome (done, rejected, failed, duplicate).",
    ["service", "outcome"],
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    "loglane_handler_seconds",
    "Time of one handler call.",
    ["service", "type"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
RETRIES = Counter(
    "loglane_handler_retries",
    "Handler attempts that failed and were tried again.",
    ["service", "type"],
    registry=REGISTRY,
)
RERUNS = Counter(
    "loglane_handler_reruns",
    "Coroutine handler runs dropped and run again, as a handler of another partition, running "
    "beside them, changed a view row they read.",
    ["service", "type"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "loglane_dead_letters",
    "Records a worker sent to its service's dead-letter topic.",
    ["service"],
    registry=REGISTRY,
)
BATCH_RECORDS = Histogram(
    "loglane_batch_records",
    "Input records committed by one store transaction.",
    ["service"],
    buckets=_RECORDS,
    registry=REGISTRY,
)
COMMIT_SECONDS = Histogram(
    "loglane_commit_seconds",
    "Time the worker spent writing and committing one store transaction, handlers apart "
    "(a commit sent ahead: sending it, then waiting for it).",
    ["service"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
CONFLICTS = Counter(
    "loglane_batch_conflicts",
    "Store transactions run again because rows they read changed under them.",
    ["service"],
    registry=REGISTRY,
)


class Forwarded(Collector):
    """Another registry's metrics, served as part of this one (the API serves the workers')."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


class ServiceMeters:
    """The counters of one service's worker, their labels bound once. Outcomes are tallied
    while a transaction runs and counted when it commits, so one that runs again counts once;
    handler calls and retries count as they happen."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.tally: collections.Counter[str] = collections.Counter()
        self._events = {outcome: EVENTS.labels(service, outcome) for outcome in OUTCOMES}
        self._dead_letters = DEAD_LETTERS.labels(service)
        self._records = BATCH_RECORDS.labels(service)
        self._commit_seconds = COMMIT_SECONDS.labels(service)
        self._conflicts = CONFLICTS.labels(service)
        self._handlers: dict[str, tuple[Histogram, Counter]] = {}

    def handler(self, event_type: str) -> tuple[Histogram, Counter]:
        """The latency histogram and retry counter of the handler of `event_type`."""
        meters = self._handlers.get(event_type)
        if meters is None:
            meters = self._handlers[event_type] = (
                HANDLER_SECONDS.labels(self.service, event_type),
                RETRIES.labels(self.service, event_type),
            )
        return meters

    def committed(self, records: int, seconds: float, tally: collections.Counter[str]) -> None:
        """A transaction of `records` input records committed with the outcomes `tally`
        (`self.tally` as it ran); the worker spent `seconds` writing and committing it."""
        for outcome, count in tally.items():
            self._events[outcome].inc(count)
        self._dead_letters.inc(tally["failed"])
        self._records.observe(records)
        self._commit_seconds.observe(seconds)

    def conflict(self) -> None:
        self._conflicts.inc()

    def rerun(self, event_type: str) -> None:
        RERUNS.labels(self.service, event_type).inc()


Backends = Callable[[], Iterable[tuple[Service, Log, Store]]]
"""The services to measure, each with a log and a store to measure it through."""


@dataclass(slots=True)
class _Sample:
    taken_at: float = 0.0
    lag: dict[TopicPartition, int] = field(default_factory=dict)
    oldest_seconds: dict[TopicPartition, float] = field(default_factory=dict)
    outbox: dict[TopicPartition, int] = field(default_factory=dict)
    parked: dict[TopicPartition, int] = field(default_factory=dict)


class ProgressSampler(Collector):
    """Lag, age of the oldest unprocessed record and outbox backlog of each service,
    measured when scraped, on a thread of its own, one measurement at a time.

    A scrape waits `patience` seconds at most for its measurement, so it answers within
    about that even while a backend hangs: then with the last sample, whose age
    `loglane_progress_sample_age_seconds` tells.
    """

    def __init__(
        self,
        backends: Backends,
        *,
        patience: float = 0.5,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._backends = backends
        self._patience = patience
        self._on_close = on_close
        self._samples: dict[str, _Sample] = {}
        self._lock = threading.Lock()
        self._measuring: threading.Thread | None = None

    def close(self) -> None:
        """Wait a little for a measurement in flight, then close what `on_close` closes."""
        if self._measuring is not None:
            self._measuring.join(timeout=5)
        if self._on_close is not None:
            self._on_close()

    def measure(self) -> threading.Thread:
        """Start measuring, unless a measurement is in flight; that measurement's thread."""
        with self._lock:
            if self._measuring is None or not self._measuring.is_alive():
                self._measuring = threading.Thread(
                    target=self._measure_all, name="progress-sampler", daemon=True
                )
                self._measuring.start()
            return self._measuring

    def _measure_all(self) -> None:
        try:
            for service, log, store in self._backends():
                self._samples[service.name] = _measure(service, log, store)
        except Exception as exc:  # the last sample stays; its age tells how stale
            logger.warning("cannot measure the services' progress: %s", exc)

    def describe(self) -> Iterable[Metric]:
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        self.measure().join(self._patience)
        families = _families()
        now = time.time()
        for name, sample in list(self._samples.items()):
            families["age"].add_metric([name], now - sample.taken_at)
            for source, lag in sample.lag.items():
                labels = [name, source.topic, str(source.partition)]
                families["lag"].add_metric(labels, lag)
                families["oldest"].add_metric(labels, sample.oldest_seconds.get(source, 0.0))
            for source, rows in sample.outbox.items():
                families["outbox"].add_metric([name, source.topic, str(source.partition)], rows)
            for source, keys in sample.parked.items():
                families["parked"].add_metric([name, source.topic, str(source.partition)], keys)
        return list(families.values())


class OwnConnections:
    """`Backends` for a `ProgressSampler` on connections of its own, opened on first use
    (so a backend down at start is retried with every sample)."""

    def __init__(
        self,
        services: Sequence[Service],
        open_log: Callable[[], Log],
        open_store: Callable[[str], Store],
    ) -> None:
        self._services = list({service.name: service for service in services}.values())
        self._open_log = open_log
        self._open_store = open_store
        self._log: Log | None = None
        self._stores: dict[str, Store] = {}

    def __call__(self) -> Iterable[tuple[Service, Log, Store]]:
        if self._log is None:
            self._log = self._open_log()
        for service in self._services:
            store = self._stores.get(service.name)
            if store is None:
                store = self._stores[service.name] = self._open_store(service.name)
            yield service, self._log, store

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        if self._log is not None:
            self._log.close()


def _measure(service: Service, log: Log, store: Store) -> _Sample:
    positions = store.positions(service.name)
    sample = _Sample(taken_at=time.time(), outbox=store.outbox_backlog(service.name))
    for topic in service.topics:
        for partition, offsets in log.offsets(topic).items():
            source = TopicPartition(topic, partition)
            position = max(positions.get(source, offsets.start), offsets.start)
            sample.lag[source] = max(offsets.end - position, 0)
            if topic == service.input_topic:
                sample.parked[source] = len(store.parked(service.name, source))
            oldest = log.read(source, position, 1) if position < offsets.end else []
            if oldest:
                age = sample.taken_at - oldest[0].timestamp_ms / 1000
                sample.oldest_seconds[source] = max(age, 0.0)
    return sample


def _families() -> dict[str, GaugeMetricFamily]:
    partition = ["service", "topic", "partition"]
    return {
        "lag": GaugeMetricFamily(
            "loglane_partition_lag",
            "Records in the log that the service's workers have not applied yet.",
            labels=partition,
        ),
        "oldest": GaugeMetricFamily(
            "loglane_partition_oldest_unprocessed_seconds",
            "Age of the oldest record not applied yet (0 when none waits).",
            labels=partition,
        ),
        "outbox": GaugeMetricFamily(
            "loglane_partition_outbox",
            "Outbox rows committed and not yet forgotten after publishing.",
            labels=partition,
        ),
        "parked": GaugeMetricFamily(
            "loglane_partition_parked_keys",
            "Keys whose commands wait behind a dead letter (loglane.parking).",
            labels=partition,
        ),
        "age": GaugeMetricFamily(
            "loglane_progress_sample_age_seconds",
            "How old the lag, age and outbox figures are: they are sampled in the background.",
            labels=["service"],
        ),
    }
