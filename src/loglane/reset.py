"""Move a service's stored input positions to the start or the end of the log.

A worker reads from the positions stored with its views, never from the log's own offsets. When
the log is recreated or truncated under the store, a stored position can lie beyond the end of
its partition, and the worker would skip every new record until the log grew past it. A reset
sets the position of every partition the service consumes (its input and the outputs it
follows) to the log's current start, or its end. With each position it forgets the origin
watermarks stored there (how far the service applied each upstream input, see
`loglane.dedupe`): they count offsets of the old log and would drop the new one's events.
It also releases the keys of the input parked behind dead letters (`loglane.parking`),
whose heads name places in the old log, and moves a re-driven position of the DLQ that lies
beyond the DLQ's end back to its start, so the letters of a new DLQ show as pending. Nothing
else changes: views, outbox, request outcomes and the memory of applied ids stay.

Each position is written by a fenced commit from the position read just before, like a batch:
if a worker of the service commits meanwhile, the reset stops with `StaleBatchError`. Stop the
service's workers first; a running worker would also keep the position it holds in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from loglane.errors import StaleBatchError
from loglane.logs.base import Log
from loglane.records import TopicPartition
from loglane.service import Service
from loglane.stores.base import Batch, Store


class ResetTarget(StrEnum):
    START = "start"
    END = "end"


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionReset:
    """One partition: its stored position (None if none), the log's offsets, and the new one."""

    partition: TopicPartition
    stored: int | None
    log_start: int
    log_end: int
    to: int

    @property
    def beyond_end(self) -> bool:
        """The stored position lies past the log's end: the log was recreated or truncated."""
        return self.stored is not None and self.stored > self.log_end


def plan_reset(log: Log, store: Store, service: Service, to: ResetTarget) -> list[PositionReset]:
    """What a reset of `service` to `to` would write, per partition it consumes; writes nothing."""
    stored = store.positions(service.name)
    plan: list[PositionReset] = []
    for partition, offsets in sorted(log.offsets(service.dlq_topic).items()):
        tp = TopicPartition(service.dlq_topic, partition)
        if stored.get(tp, 0) > offsets.end:  # from a DLQ since recreated
            plan.append(
                PositionReset(
                    partition=tp,
                    stored=stored[tp],
                    log_start=offsets.start,
                    log_end=offsets.end,
                    to=offsets.start,
                )
            )
    for topic in service.topics:
        for partition, offsets in sorted(log.offsets(topic).items()):
            tp = TopicPartition(topic, partition)
            plan.append(
                PositionReset(
                    partition=tp,
                    stored=stored.get(tp),
                    log_start=offsets.start,
                    log_end=offsets.end,
                    to=offsets.start if to is ResetTarget.START else offsets.end,
                )
            )
    return plan


def reset_positions(store: Store, service: Service, plan: list[PositionReset]) -> None:
    """Write the positions of `plan`, each fenced on its stored one, without watermarks.

    Raises `StaleBatchError` naming how far it got if a position moved since `plan_reset`
    read it; the positions written before stay written, and running the reset again (once
    the workers are stopped) finishes it.
    """
    for written, row in enumerate(plan):
        batch = Batch(
            service=service.name,
            source=row.partition,
            expected_position=row.stored,
            position=row.to,
            origins={},
        )
        if row.partition.topic == service.input_topic:
            batch.unpark = list(store.parked(service.name, row.partition))
        try:
            store.commit(batch)
        except StaleBatchError:
            raise StaleBatchError(
                f"the position of {row.partition} moved during the reset, so a worker of "
                f"{service.name!r} is running ({written} positions were reset); stop every "
                f"worker of {service.name!r} and run the reset again"
            ) from None
