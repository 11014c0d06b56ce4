"""Where each service stands: per partition, the log's end, the stored position, the lag."""

from __future__ import annotations

from dataclasses import dataclass

from loglane.dlq import pending_count
from loglane.logs.base import Log
from loglane.records import TopicPartition
from loglane.service import Service
from loglane.stores.base import Store


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionStatus:
    service: str
    partition: TopicPartition
    log_end: int
    stored: int | None
    committed: int | None
    outbox: int

    @property
    def lag(self) -> int:
        """Records in the log the service has not applied yet."""
        return self.log_end - (self.stored or 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStatus:
    service: str
    partitions: list[PartitionStatus]
    dead_letters: int
    """Dead letters neither re-driven nor dropped yet."""
    dead_letters_total: int
    """Every record the DLQ holds, handled or not."""

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


def service_status(service: Service, log: Log, store: Store) -> ServiceStatus:
    positions = store.positions(service.name)
    backlog = store.outbox_backlog(service.name)
    rows: list[PartitionStatus] = []
    for topic in service.topics:
        committed = log.committed(service.name, topic)
        for partition, offsets in sorted(log.offsets(topic).items()):
            tp = TopicPartition(topic, partition)
            rows.append(
                PartitionStatus(
                    service=service.name,
                    partition=tp,
                    log_end=offsets.end,
                    stored=positions.get(tp),
                    committed=committed.get(partition),
                    outbox=backlog.get(tp, 0),
                )
            )
    total = sum(o.end - o.start for o in log.offsets(service.dlq_topic).values())
    return ServiceStatus(
        service=service.name,
        partitions=rows,
        dead_letters=pending_count(log, store, service),
        dead_letters_total=total,
    )
