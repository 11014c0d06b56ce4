"""Rebuild a service's views by replay beside the live ones, and swap them in at a position.

`loglane rebuild`, top to bottom (`Rebuild.run`):

1. open the shadow store (`Store.shadow`) and check that the log still holds every record
   the replay needs: from the shadow's stored positions on (from offset 0 on a first run).
   Retention may have dropped the start: `RetentionGapError`, unless the gap is accepted;
2. replay: a worker of a consumer group of its own (`<service>~rebuild`), in replay mode,
   runs the handlers into the shadow, which changes only the shadow's views and positions:
   no output event is published again, no request answered again, no dead letter written
   twice. It never passes the live positions: records at or beyond them are held back
   and read again once the live workers have passed them;
3. once the shadow is within `swap_lag` records of the live positions, open the live
   store's swap (`Store.swap_views`), which holds the live positions still, and replay up
   to exactly them;
4. in that same transaction, replace the live views with the shadow's and commit; then
   delete the shadow.

A crash anywhere before the commit leaves the live views as they were and the shadow with
its positions: the next run resumes from them. See docs/rebuild.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loglane.errors import BackendUnavailableError, ConfigurationError, LoglaneError
from loglane.logs.base import Consumer, Log, PartitionOffsets, Publishing, RebalanceListener
from loglane.records import Message, Position, Record, TopicPartition
from loglane.service import Service
from loglane.stores.base import Batch, Store
from loglane.views import View
from loglane.worker import Worker

logger = logging.getLogger("loglane.rebuild")


class RetentionGapError(LoglaneError):
    """The log no longer holds records a rebuild would have to replay."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionGap:
    """A partition whose retained records start after the offset the replay needs."""

    partition: TopicPartition
    needed: int
    start: int

    def __str__(self) -> str:
        return f"{self.partition}: needs offset {self.needed}, the log starts at {self.start}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RebuildProgress:
    """Where a rebuild stands: records the shadow has read (the sum of its positions over
    the service's partitions), and the same sum for the live store."""

    replayed: int
    live: int
    swapping: bool = False

    @property
    def behind(self) -> int:
        return max(0, self.live - self.replayed)


@dataclass(frozen=True, slots=True, kw_only=True)
class RebuildResult:
    """A rebuild that swapped: its views, the live positions they were swapped in at, how
    many records this run handled, and how many swaps it had to postpone."""

    service: str
    views: tuple[str, ...]
    positions: dict[TopicPartition, int]
    handled: int
    postponed: int


def retention_gaps(
    log: Log, service: Service, replayed: Mapping[TopicPartition, int]
) -> list[RetentionGap]:
    """The partitions of `service`'s topics whose retained start lies beyond what the
    replay needs: its position in `replayed`, or 0 for a partition it has not read."""
    gaps: list[RetentionGap] = []
    for topic in service.topics:
        for partition, offsets in sorted(log.offsets(topic).items()):
            tp = TopicPartition(topic, partition)
            needed = replayed.get(tp, 0)
            if offsets.start > needed:
                gaps.append(RetentionGap(partition=tp, needed=needed, start=offsets.start))
    return gaps


def chosen_views(service: Service, names: Sequence[str]) -> tuple[View[Any], ...]:
    """The views of `service` named (all of them if none is)."""
    unknown = [name for name in names if name not in service.views]
    if unknown:
        known = ", ".join(sorted(service.views)) or "none"
        raise ConfigurationError(f"{service.name} has no view {unknown[0]!r}; its views: {known}")
    return tuple(service.views[name] for name in names or sorted(service.views))


class Rebuild:
    """The rebuild of `service`'s views (those named in `views`, or all) in the `live` store
    by replay of `log`.

    Handlers run on every view in the shadow; only the chosen ones are swapped in. The
    swap is tried once the shadow is within `swap_lag` records of the live positions; if
    the replay cannot reach them within `catch_up_timeout` seconds (live workers wait all
    that time), the swap is rolled back and tried again later, from half the lag.
    `accept_gap` replays what the log still holds when retention has dropped records the
    replay needs. `on_progress` is called on the rebuild's thread after every pass.
    """

    def __init__(
        self,
        service: Service,
        log: Log,
        live: Store,
        *,
        views: Sequence[str] = (),
        accept_gap: bool = False,
        swap_lag: int = 1000,
        catch_up_timeout: float = 10.0,
        batch_size: int = 1000,
        on_progress: Callable[[RebuildProgress], None] | None = None,
    ) -> None:
        self.service = service
        self.log = log
        self.live = live
        self.views = chosen_views(service, views)
        self.accept_gap = accept_gap
        self.swap_lag = swap_lag
        self.catch_up_timeout = catch_up_timeout
        self.batch_size = batch_size
        self.on_progress = on_progress
        self.group = f"{service.name}~rebuild"
        self._replayed: dict[TopicPartition, int] = {}
        self._postponed = 0

    def run(self) -> RebuildResult:
        """Replay into the shadow, swap, and delete the shadow; see the module's docstring.
        Raises `RetentionGapError` before replaying anything if the log lacks records."""
        name = self.service.name
        shadow = self.live.shadow(name)
        try:
            self._replayed = dict(shadow.positions(name))
            try:
                self._check_retention()
            except RetentionGapError:
                if not self._replayed:  # a shadow just made for nothing: leave none behind
                    shadow.discard(name)
                raise
            held = _HeldBackLog(self.log, self.live.positions(name))
            worker = Worker(
                self.service,
                held,
                shadow,
                batch_size=self.batch_size,
                poll_timeout=0.2,
                on_commit=self._committed,
                group=self.group,
                replay=True,
            )
            worker.start()
            try:
                positions = self._replay_and_swap(worker, held, shadow)
            finally:
                worker.close()
        except BaseException:
            shadow.close()
            raise
        shadow.discard(name)
        return RebuildResult(
            service=name,
            views=tuple(view.name for view in self.views),
            positions=positions,
            handled=worker.handled,
            postponed=self._postponed,
        )

    def _check_retention(self) -> None:
        gaps = retention_gaps(self.log, self.service, self._replayed)
        if not gaps:
            return
        if self.accept_gap:
            logger.warning(
                "replaying what the log retains; records before it are missing from the "
                "rebuilt views: %s",
                "; ".join(map(str, gaps)),
            )
            return
        shown = "; ".join(map(str, gaps[:4])) + ("; ..." if len(gaps) > 4 else "")
        raise RetentionGapError(
            f"the log no longer holds every record {self.service.name} needs replayed "
            f"({len(gaps)} partitions lost their start to retention: {shown}). Views rebuilt "
            "from what remains would miss the effects of the dropped records; keep the live "
            "views, or pass --accept-gap to rebuild from what the log retains "
            "(see docs/rebuild.md)"
        )

    def _committed(self, batch: Batch) -> None:
        self._replayed[batch.source] = batch.position

    def _progress(self, live: Mapping[TopicPartition, int], *, swapping: bool = False) -> None:
        if self.on_progress is not None:
            replayed = sum(self._replayed.values())
            self.on_progress(
                RebuildProgress(replayed=replayed, live=sum(live.values()), swapping=swapping)
            )

    def _replay_and_swap(
        self, worker: Worker, held: _HeldBackLog, shadow: Store
    ) -> dict[TopicPartition, int]:
        partitions = sum(self.log.partition_count(topic) for topic in self.service.topics)
        while True:
            live = self.live.positions(self.service.name)
            held.limits = live
            self._progress(live)
            behind = sum(max(0, at - self._replayed.get(tp, 0)) for tp, at in live.items())
            # each swap postponed halves the lag the next one may start from, so live
            # workers are not held back again and again for nothing
            if behind <= self.swap_lag >> self._postponed and held.owned() == partitions:
                swapped = self._swap(worker, held, shadow)
                if swapped is not None:
                    return swapped
            if worker.run_once() == 0:
                time.sleep(0.02)  # nothing below the live positions: let them move on

    def _swap(
        self, worker: Worker, held: _HeldBackLog, shadow: Store
    ) -> dict[TopicPartition, int] | None:
        """Swap at the live positions, or None if the replay could not reach them in time."""
        try:
            with self.live.swap_views(self.service.name, shadow) as swap:
                target = swap.positions
                held.limits = target
                deadline = time.monotonic() + self.catch_up_timeout
                while not self._reached(target):
                    if time.monotonic() > deadline:
                        raise _Postponed
                    worker.run_once(0.05)
                self._progress(target, swapping=True)
                swap.replace(self.views)
            return target
        except _Postponed:
            why = f"the replay did not reach the live positions within {self.catch_up_timeout}s"
        except BackendUnavailableError as exc:
            why = f"the live store could not be locked: {exc}"
        self._postponed += 1
        logger.warning("swapping later: %s", why)
        return None

    def _reached(self, target: Mapping[TopicPartition, int]) -> bool:
        """The shadow applied every record below `target` and none at or beyond it."""
        for tp, replayed in self._replayed.items():
            if replayed > target.get(tp, 0):
                raise LoglaneError(
                    f"the rebuild of {self.service.name} read {tp} up to {replayed}, beyond "
                    f"the live position {target.get(tp, 0)}: the live positions moved back "
                    "(a reset?). Delete the shadow and run the rebuild again"
                )
        for tp, at in target.items():
            replayed = self._replayed.get(tp, 0)
            if replayed < at:
                ahead = self.log.read(tp, replayed, 1)  # offsets may skip (compaction)
                if ahead and ahead[0].offset < at:
                    return False
        return True


class _Postponed(Exception):
    """The replay did not reach the live positions while they were held still."""


class _HeldBackLog(Log):
    """The log as the replay sees it: records of a partition at or beyond its limit (the
    live position; 0 for a partition without one) are held back, to be read again later."""

    def __init__(self, log: Log, limits: dict[TopicPartition, int]) -> None:
        self._log = log
        self.limits = limits
        self._consumers: list[_HeldBackConsumer] = []

    def owned(self) -> int:
        """How many partitions the replay's consumer owns."""
        return sum(len(consumer.assignment()) for consumer in self._consumers)

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        spread: bool = False,
    ) -> Consumer:
        made = self._log.consumer(group, topics, listener, spread=spread)
        consumer = _HeldBackConsumer(self, made)
        self._consumers.append(consumer)
        return consumer

    def create_topic(self, name: str, partitions: int, *, retention_ms: int | None = None) -> int:
        return self._log.create_topic(name, partitions, retention_ms=retention_ms)

    def partition_count(self, topic: str) -> int:
        return self._log.partition_count(topic)

    def append(self, messages: Sequence[Message]) -> list[Position]:
        return self._log.append(messages)

    def publish(self, messages: Sequence[Message]) -> Publishing:
        return self._log.publish(messages)

    def read(self, partition: TopicPartition, offset: int, max_records: int) -> list[Record]:
        return self._log.read(partition, offset, max_records)

    def offsets(self, topic: str) -> dict[int, PartitionOffsets]:
        return self._log.offsets(topic)

    def committed(self, group: str, topic: str) -> dict[int, int]:
        return self._log.committed(group, topic)

    def close(self) -> None:
        """The log is the caller's to close."""


class _HeldBackConsumer(Consumer):
    def __init__(self, log: _HeldBackLog, consumer: Consumer) -> None:
        self._log = log
        self._consumer = consumer

    def poll(self, timeout: float, max_records: int) -> list[Record]:
        records = self._consumer.poll(timeout, max_records)
        limits = self._log.limits
        kept: list[Record] = []
        held: dict[TopicPartition, int] = {}
        for record in records:
            tp = record.topic_partition
            if tp not in held and record.offset < limits.get(tp, 0):
                kept.append(record)
            elif tp not in held:  # this one and the partition's later ones, read again later
                held[tp] = record.offset
        for tp, offset in held.items():
            self._consumer.seek(tp, offset)
        return kept

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._consumer.seek(partition, offset)

    def commit(self, offsets: Mapping[TopicPartition, int], *, wait: bool = True) -> None:
        self._consumer.commit(offsets, wait=wait)

    def assignment(self) -> frozenset[TopicPartition]:
        return self._consumer.assignment()

    def close(self) -> None:
        self._consumer.close()
