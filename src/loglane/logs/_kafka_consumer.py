"""The Kafka log's consumer: a member of a consumer group, whose rebalances reach the
worker's listener inside `poll` (see `loglane.logs.kafka` for how they meet Loglane's
contract), and records as Loglane reads them."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

import confluent_kafka as ck

from loglane.errors import BackendUnavailableError
from loglane.logs._kafka_errors import MOVING, consumer_error, error_code, reason
from loglane.logs.base import Consumer, RebalanceListener
from loglane.records import Headers, Record, TopicPartition

logger = logging.getLogger("loglane.kafka")


class KafkaConsumer(Consumer):
    """A member of a Kafka consumer group; rebalances reach the listener inside `poll`."""

    def __init__(
        self,
        consumer: ck.Consumer,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        spread: bool = False,
    ) -> None:
        self._consumer = consumer
        self._listener = listener
        self._spread = spread
        self._owned: set[TopicPartition] = set()
        # partitions assigned but not yet accepted by the listener (it raised): kept paused
        self._unannounced: set[TopicPartition] = set()
        # while the listener runs inside a rebalance, seeks are collected, not applied
        self._collected: dict[TopicPartition, int] | None = None
        # records fetched but held back from a poll, to share the next one out (`share_out`)
        self._held: list[Record] = []
        # a spread consumer's next offset to hand out per partition, where it knows it
        self._next: dict[TopicPartition, int] = {}
        self._closed = False
        consumer.subscribe(
            list(topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._owned - self._unannounced)

    # -- rebalance callbacks (librdkafka calls them from inside poll or close) --------------------

    def _on_assign(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        assigned = [TopicPartition(p.topic, p.partition) for p in partitions]
        seeks: dict[TopicPartition, int] = {}
        try:
            if assigned:
                seeks = self._announce(assigned)
        except BaseException:
            self._owned.update(assigned)
            self._unannounced.update(assigned)
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)
            raise
        self._owned.update(assigned)
        self._next.update(seeks)
        consumer.incremental_assign([_at(tp, seeks.get(tp, ck.OFFSET_INVALID)) for tp in assigned])

    def _on_revoke(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        revoked = [TopicPartition(p.topic, p.partition) for p in partitions]
        self._drop_held(revoked)
        announced = [tp for tp in revoked if tp in self._owned and tp not in self._unannounced]
        try:
            if announced:
                self._listener.on_revoked(announced)
        finally:
            self._owned.difference_update(revoked)
            self._unannounced.difference_update(revoked)
            for tp in revoked:
                self._next.pop(tp, None)
            # after a lost session librdkafka may have dropped some of them already
            current = {(p.topic, p.partition) for p in consumer.assignment()}
            still = [p for p in partitions if (p.topic, p.partition) in current]
            if still:
                consumer.incremental_unassign(still)

    def _announce(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Tell the listener it owns `partitions`; return where it sought them."""
        self._collected = {}
        try:
            self._listener.on_assigned(partitions)
            return self._collected
        finally:
            self._collected = None

    def _announce_pending(self) -> None:
        """Offer the listener again the partitions it failed to take at assignment."""
        if not self._unannounced:
            return
        pending = sorted(self._unannounced)
        seeks = self._announce(pending)
        self._unannounced.clear()
        self._consumer.resume([_at(tp, ck.OFFSET_INVALID) for tp in pending])
        for tp, offset in seeks.items():  # the others start where their assignment put them
            self._restart(tp, offset)

    def _restart(self, partition: TopicPartition, offset: int) -> None:
        """Start fetching `partition` afresh at `offset`, dropping whatever was prefetched.

        A local re-assignment, not a rebalance: it works whether or not the fetcher has
        started, which a plain seek right after an assignment does not.
        """
        self._consumer.incremental_unassign([_at(partition, ck.OFFSET_INVALID)])
        self._consumer.incremental_assign([_at(partition, offset)])
        self._next[partition] = offset

    # -- the Consumer interface -----------------------------------------------------------------

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._drop_held([partition])
        if self._collected is not None:
            self._collected[partition] = offset
        elif partition in self._owned and partition not in self._unannounced:
            self._restart(partition, offset)
        else:
            logger.debug("ignored a seek of %s, which this member does not own", partition)

    def poll(self, timeout: float, max_records: int) -> list[Record]:
        """A spread consumer fetches up to twice `max_records`, to share them out among the
        partitions that have records to hand out (`share_out`, `_busy`); those it holds back
        come first in the next poll."""
        self._announce_pending()
        # (held records stay in `_held` while librdkafka runs rebalance callbacks in here)
        wanted = (2 if self._spread else 1) * max_records - len(self._held)
        messages = self._consumer.consume(wanted, 0) if wanted > 0 else []
        if not messages and not self._held and timeout > 0:
            # consume() would wait out its whole timeout for a full batch; poll() returns
            # on the first record, and the rest of the batch is taken without waiting
            first = self._consumer.poll(timeout)
            if first is not None:
                messages = [first]
                if max_records > 1:
                    messages += self._consumer.consume(max_records - 1, 0)
        records: list[Record] = []
        for index, message in enumerate(messages):
            error = message.error()
            if error is None:
                records.append(to_record(message))
            elif error.code() == ck.KafkaError._MAX_POLL_EXCEEDED:
                logger.warning("left the group: %s; it rejoins on the next poll", error.str())
            elif error.code() != ck.KafkaError._PARTITION_EOF:
                rest = [to_record(m) for m in messages[index + 1 :] if not m.error()]
                self._rewind(self._held + records + rest)
                raise consumer_error(error)
        # records fetched for a partition that was revoked during this very poll are not ours
        if self._held:
            records, self._held = self._held + records, []
        owned = [record for record in records if record.topic_partition in self._owned]
        if not self._spread:
            return owned
        taken, self._held = share_out(owned, max_records, self._busy(owned))
        for record in taken:
            self._next[record.topic_partition] = record.offset + 1
        return taken

    def _busy(self, records: list[Record]) -> int:
        """How many owned partitions have records to hand out: some in `records`, or more in
        the log than this member has handed out, as far as librdkafka's last fetch of it
        tells (a partition not fetched yet counts). A partition whose records librdkafka has
        not fetched yet thus keeps its share of the poll, and does not wait a whole pass
        behind a partition that was fetched first."""
        present = {record.topic_partition for record in records}
        waiting = 0
        for tp in self._owned - self._unannounced - present:
            try:
                _, high = self._consumer.get_watermark_offsets(_at(tp, 0), cached=True)
            except ck.KafkaException:
                continue
            handed_out = self._next.get(tp)
            if high < 0 or (handed_out is not None and high > handed_out):
                waiting += 1
        return len(present) + waiting

    def _drop_held(self, partitions: Sequence[TopicPartition]) -> None:
        """Forget the held records of `partitions`: they are fetched again where they
        restart, or are no longer this member's."""
        if self._held:
            dropped = set(partitions)
            self._held = [r for r in self._held if r.topic_partition not in dropped]

    def _rewind(self, records: list[Record]) -> None:
        """Records fetched but not handed over are fetched again on the next poll."""
        first: dict[TopicPartition, int] = {}
        for record in records:
            first.setdefault(record.topic_partition, record.offset)
        for tp, offset in first.items():
            self.seek(tp, offset)

    def commit(self, offsets: Mapping[TopicPartition, int], *, wait: bool = True) -> None:
        mine = [
            _at(tp, offset)
            for tp, offset in offsets.items()
            if tp in self._owned and tp not in self._unannounced
        ]
        if not mine:
            return
        if not wait:  # its result reaches `on_commit` in a later poll
            self._consumer.commit(offsets=mine, asynchronous=True)
            return
        try:
            results = self._consumer.commit(offsets=mine, asynchronous=False)
        except ck.KafkaException as exc:
            if error_code(exc) in MOVING:
                logger.info("offset commit skipped while partitions move: %s", reason(exc))
                return
            raise BackendUnavailableError(
                f"Kafka did not take the offset commit: {reason(exc)}"
            ) from None
        for result in results or []:
            if result.error is not None and result.error.code() not in MOVING:
                raise BackendUnavailableError(
                    f"Kafka did not take the offset commit of {result.topic}[{result.partition}]:"
                    f" {result.error.str()}"
                )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._consumer.close()


def on_commit(error: ck.KafkaError | None, partitions: list[ck.TopicPartition]) -> None:
    """The result of an offset commit made without waiting: a failure is worth a line, as
    the group's lag reads stale until a later commit lands; the store holds the positions."""
    failed = [
        f"{p.topic}[{p.partition}]: {p.error.str()}"
        for p in partitions
        if p.error is not None and p.error.code() not in MOVING
    ]
    if error is not None and error.code() not in MOVING:
        logger.warning("Kafka did not take an offset commit: %s", error.str())
    elif failed:
        logger.warning("Kafka did not take the offset commit of %s", ", ".join(failed))


def share_out(
    records: list[Record], max_records: int, busy: int = 1
) -> tuple[list[Record], list[Record]]:
    """Up to `max_records` of `records`, and the rest, held back: from each partition no
    more than an equal share of `max_records` among `busy` partitions (or those in
    `records`, if more). A worker runs the coroutine handlers of different partitions side
    by side, so a pass lasts as long as its largest share: a partition with a backlog does
    not lengthen the passes of the others. What is taken of a partition is always its
    first records; fewer records than partitions are taken oldest first."""
    share = max_records // max(busy, len({record.topic_partition for record in records}), 1)
    if len(records) <= share:
        return records, []
    if share == 0:
        return records[:max_records], records[max_records:]
    counts: dict[TopicPartition, int] = {}
    taken: list[Record] = []
    rest: list[Record] = []
    for record in records:  # in the order fetched: each partition's in offset order
        tp = record.topic_partition
        count = counts.get(tp, 0)
        if count < share:
            taken.append(record)
            counts[tp] = count + 1
        else:
            rest.append(record)
    return taken, rest


def _at(partition: TopicPartition, offset: int) -> ck.TopicPartition:
    return ck.TopicPartition(partition.topic, partition.partition, offset)


def to_record(message: ck.Message) -> Record:
    # set on every record a consumer returns; only error events lack them
    topic, partition = cast(str, message.topic()), cast(int, message.partition())
    offset = cast(int, message.offset())
    _, timestamp_ms = message.timestamp()
    return Record(
        topic,
        partition,
        offset,
        message.key(),
        message.value() or b"",
        _headers(message.headers()),
        timestamp_ms,
    )


def _headers(raw: Any) -> Headers:
    """librdkafka's headers as Loglane's: a tuple of (name, bytes), a null value as b""."""
    if not raw:
        return ()
    pairs = tuple(raw.items() if isinstance(raw, dict) else raw)
    for _, value in pairs:
        if not isinstance(value, bytes):
            break
    else:
        return cast(Headers, pairs)  # the common case, checked above: no copy needed
    return tuple(
        (name, value.encode() if isinstance(value, str) else value or b"") for name, value in pairs
    )
