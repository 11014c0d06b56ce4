"""Apache Kafka as the log, through confluent-kafka (librdkafka).

URLs and options: see `loglane.logs.kafka_settings`.

How Kafka's semantics meet Loglane's:

- The producer is idempotent with `acks=all`, so a retried batch neither reorders nor doubles
  records within a partition, and it partitions with `murmur2_random`, so a key lands on the
  same partition as with Java clients and the embedded log. `append` waits for every delivery
  report and raises if any record was not acknowledged.
- Consumers use the cooperative-sticky assignor: a rebalance takes away only the partitions
  that move. librdkafka calls the rebalance callbacks on the polling thread, inside `poll`;
  they call the `RebalanceListener` and then change the assignment, starting each new
  partition where the listener sought it (the worker seeks to the positions in its store),
  else at the group's committed offset.
- `consumer.group.protocol=consumer` switches to Kafka 4's consumer group protocol (KIP-848),
  where the broker computes assignments, always incrementally; the contract holds there too.
- Auto-commit and the offset store are off: offsets are committed only by `commit`, after the
  store, for lag monitoring. A member that lost its partitions commits nothing for them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, cast

import confluent_kafka as ck
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # stubs lack re-exports
    AdminClient,
    NewTopic,
    OffsetSpec,
)

from loglane.errors import BackendUnavailableError, ConfigurationError
from loglane.logs._kafka_consumer import KafkaConsumer, on_commit, to_record
from loglane.logs._kafka_errors import (
    MISSING_TOPIC,
    consumer_error,
    error_code,
    error_of,
    on_client_error,
    reason,
)
from loglane.logs.base import (
    PUBLISHED,
    Log,
    PartitionOffsets,
    Publishing,
    RebalanceListener,
)
from loglane.logs.kafka_settings import KafkaSettings
from loglane.records import Message, Position, Record, TopicPartition

logger = logging.getLogger("loglane.kafka")

SAFE_REPLICATION_FACTOR = 3
"""Copies of each partition that new topics get on a cluster of this many brokers or more."""
_SPREAD_FETCH_BYTES = 65536
"""A spread consumer's `max.partition.fetch.bytes` (librdkafka's default is 1 MiB): with
coroutine handlers awaiting 1 ms of I/O on 4 partitions, A1 went from 1,238 to 2,252
events/s with it."""
_EARLIEST: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]


class KafkaLog(Log):
    """Topics on a Kafka cluster; one producer, one admin client and a reader per log."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._admin = AdminClient(self._config())
        self._producer_lock = threading.Lock()
        self._producer: ck.Producer | None = None
        self._reader_lock = threading.Lock()
        self._reader: ck.Consumer | None = None
        self._known: set[str] = set()
        self._warned_replication = False
        self._check_reachable()

    @classmethod
    def from_url(cls, url: str) -> KafkaLog:
        return cls(KafkaSettings.from_url(url))

    def _config(self, *extra: Mapping[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.settings.bootstrap_servers,
            "client.id": "loglane",
            "error_cb": on_client_error,
            "logger": logger,
        }
        config.update(self.settings.client)
        for more in extra:
            config.update(more)
        return config

    def _check_reachable(self) -> None:
        """One bounded metadata request, so a wrong address fails now, in one clear line."""
        try:
            self._admin.list_topics(timeout=self.settings.connect_timeout)
        except ck.KafkaException as exc:
            raise BackendUnavailableError(
                f"Kafka at {self.settings.bootstrap_servers} did not answer within "
                f"{self.settings.connect_timeout:g}s ({reason(exc)}); check the address and "
                "security options, or start a broker (scripts/kafka start)"
            ) from None

    def _unavailable(self, what: str, exc: ck.KafkaException) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"Kafka at {self.settings.bootstrap_servers} failed to {what}: {reason(exc)}"
        )

    # -- topics ---------------------------------------------------------------------------------

    def _partitions_of(self, topic: str) -> int | None:
        """The partition count of `topic`, or None if the cluster does not have it."""
        try:
            metadata = self._admin.list_topics(topic=topic, timeout=self.settings.request_timeout)
        except ck.KafkaException as exc:
            raise self._unavailable(f"describe topic {topic!r}", exc) from None
        found = metadata.topics.get(topic)
        if found is None or (found.error is not None and found.error.code() in MISSING_TOPIC):
            return None
        self._known.add(topic)
        return len(found.partitions)

    def create_topic(self, name: str, partitions: int, *, retention_ms: int | None = None) -> int:
        existing = self._partitions_of(name)
        if existing is not None:
            return existing
        if not self.settings.create_topics:
            raise ConfigurationError(
                f"topic {name!r} does not exist on {self.settings.bootstrap_servers} and "
                f"create_topics=false; create it ({partitions} partitions) or allow creation"
            )
        count = self.settings.partitions or partitions
        retention = retention_ms if retention_ms is not None else self.settings.retention_ms
        config = {} if retention is None else {"retention.ms": str(retention)}
        replicas = self._replication_factor()
        if replicas >= 3:  # acks=all then waits for two copies, and one broker may be down
            config["min.insync.replicas"] = "2"
        new = NewTopic(name, count, replicas, config=config)
        futures = self._admin.create_topics(
            [new], request_timeout=self.settings.request_timeout, operation_timeout=10.0
        )
        try:
            futures[name].result()
        except ck.KafkaException as exc:
            code = error_code(exc)
            if code in (
                ck.KafkaError.INVALID_REPLICATION_FACTOR,
                ck.KafkaError.INVALID_PARTITIONS,
                ck.KafkaError.INVALID_CONFIG,
                ck.KafkaError.POLICY_VIOLATION,
                ck.KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ck.KafkaError.CLUSTER_AUTHORIZATION_FAILED,
            ):
                raise ConfigurationError(f"cannot create topic {name!r}: {reason(exc)}") from None
            if code != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise self._unavailable(f"create topic {name!r}", exc) from None
        return self._await_topic(name)

    def _replication_factor(self) -> int:
        """The replication factor of new topics: the URL's, else 3 on a cluster of three or
        more brokers (so a broker may die without losing acknowledged records), else the
        cluster's `default.replication.factor` (-1 in the CreateTopics request)."""
        asked = self.settings.replication_factor
        brokers = self._broker_count()
        if asked is None:
            return SAFE_REPLICATION_FACTOR if brokers >= SAFE_REPLICATION_FACTOR else -1
        if asked < SAFE_REPLICATION_FACTOR <= brokers and not self._warned_replication:
            self._warned_replication = True
            logger.warning(
                "replication_factor=%d on a cluster of %d brokers: acknowledged records are "
                "lost when %s; leave replication_factor out (3 copies, min.insync.replicas=2) "
                "unless the cluster holds nothing to keep",
                asked,
                brokers,
                "the broker of a partition fails" if asked == 1 else f"{asked} brokers fail",
            )
        return asked

    def _broker_count(self) -> int:
        """How many brokers the cluster's metadata lists (those that are up)."""
        try:
            metadata = self._admin.list_topics(timeout=self.settings.request_timeout)
        except ck.KafkaException as exc:
            raise self._unavailable("list the cluster's brokers", exc) from None
        return len(metadata.brokers)

    def _await_topic(self, name: str) -> int:
        """Wait until the brokers' metadata shows the new topic with a leader per partition."""
        deadline = time.monotonic() + self.settings.request_timeout
        while time.monotonic() < deadline:
            try:
                metadata = self._admin.list_topics(
                    topic=name, timeout=self.settings.request_timeout
                )
            except ck.KafkaException as exc:
                raise self._unavailable(f"describe topic {name!r}", exc) from None
            found = metadata.topics.get(name)
            if (
                found is not None
                and found.error is None
                and found.partitions
                and all(p.leader >= 0 for p in found.partitions.values())
            ):
                self._known.add(name)
                return len(found.partitions)
            time.sleep(0.05)
        raise BackendUnavailableError(
            f"topic {name!r} was created but Kafka at {self.settings.bootstrap_servers} did "
            f"not list it with leaders within {self.settings.request_timeout:g}s; try again"
        )

    def partition_count(self, topic: str) -> int:
        count = self._partitions_of(topic)
        if count is None:
            raise self._missing(topic)
        return count

    def _missing(self, topic: str) -> ConfigurationError:
        return ConfigurationError(
            f"topic {topic!r} does not exist on {self.settings.bootstrap_servers}; start the "
            "service's workers once (they create their topics) or create it first"
        )

    def _require_topics(self, topics: Sequence[str]) -> None:
        for topic in topics:
            if topic not in self._known and self._partitions_of(topic) is None:
                raise self._missing(topic)

    # -- append ---------------------------------------------------------------------------------

    def _producer_client(self) -> ck.Producer:
        if self._producer is None:
            self._producer = ck.Producer(
                self._config(
                    {
                        "enable.idempotence": True,
                        "acks": "all",
                        "linger.ms": 5,
                        "partitioner": "murmur2_random",
                        "message.timeout.ms": 30000,
                    },
                    self.settings.producer,
                )
            )
        return self._producer

    def append(self, messages: Sequence[Message]) -> list[Position]:
        if not messages:
            return []
        self._require_topics(sorted({message.topic for message in messages}))
        reports: list[ck.Message | ck.KafkaError | None] = [None] * len(messages)

        def report(index: int, error: ck.KafkaError | None, delivered: ck.Message) -> None:
            reports[index] = delivered if error is None else error

        with self._producer_lock:
            producer = self._producer_client()
            try:
                for index, message in enumerate(messages):
                    self._produce(producer, message, partial(report, index))
                while producer.flush(1.0) > 0 and None in reports:
                    pass
            except ck.KafkaException as exc:
                self._discard_if_fatal(error_of(exc))
                raise self._unavailable(f"append to {messages[0].topic!r}", exc) from None
        positions: list[Position] = []
        for message, outcome in zip(messages, reports, strict=True):
            if not isinstance(outcome, ck.Message):
                failed = sum(1 for r in reports if not isinstance(r, ck.Message))
                raise self._delivery_failed(message, outcome, failed, len(reports))
            positions.append(
                Position(message.topic, cast(int, outcome.partition()), cast(int, outcome.offset()))
            )
        return positions

    def publish(self, messages: Sequence[Message]) -> Publishing:
        if not messages:
            return PUBLISHED
        self._require_topics(sorted({message.topic for message in messages}))
        publishing = _Publishing(self, messages)
        with self._producer_lock:
            producer = self._producer_client()
            try:
                for message in messages:
                    self._produce(producer, message, publishing.report)
            except ck.KafkaException as exc:
                self._discard_if_fatal(error_of(exc))
                raise self._unavailable(f"publish to {messages[0].topic!r}", exc) from None
        return publishing

    @staticmethod
    def _produce(
        producer: ck.Producer,
        message: Message,
        on_delivery: Callable[[ck.KafkaError | None, ck.Message], None],
    ) -> None:
        while True:
            try:
                producer.produce(
                    message.topic,
                    message.value,
                    message.key,
                    on_delivery=on_delivery,
                    headers=list(message.headers) or None,
                )
                return
            except BufferError:
                # the local queue is full: serve delivery reports until there is room
                producer.poll(0.1)

    def _delivery_failed(
        self, message: Message, outcome: ck.KafkaError | None, failed: int, total: int
    ) -> Exception:
        if outcome is None:
            return BackendUnavailableError(
                f"Kafka at {self.settings.bootstrap_servers} did not confirm {failed} of "
                f"{total} records; they may or may not be stored; retry the append"
            )
        self._discard_if_fatal(outcome)
        if outcome.code() in MISSING_TOPIC:
            self._known.discard(message.topic)
            return self._missing(message.topic)
        if outcome.code() == ck.KafkaError.MSG_SIZE_TOO_LARGE:
            return ConfigurationError(
                f"a record of {len(message.value)} bytes for {message.topic!r} is larger than "
                "Kafka accepts; raise the topic's max.message.bytes (and producer."
                "message.max.bytes) or emit smaller events"
            )
        return BackendUnavailableError(
            f"Kafka at {self.settings.bootstrap_servers} did not store {failed} of "
            f"{total} records for {message.topic!r}: {outcome.str()}; retry the append"
        )

    def _discard_if_fatal(self, error: ck.KafkaError | None) -> None:
        """An idempotent producer that hit a fatal error is unusable; the next append makes
        a fresh one (a new producer id), which is safe because records carry their own ids."""
        if error is not None and error.fatal():
            self._producer = None

    # -- read -----------------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[ck.Consumer]:
        """The log's own consumer for `read`: no group, partitions assigned by hand."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = ck.Consumer(
                    self._config(
                        {
                            "group.id": f"loglane-reader-{uuid.uuid4().hex}",
                            "enable.auto.commit": False,
                            "enable.partition.eof": True,
                            "auto.offset.reset": "earliest",
                        },
                        self.settings.consumer,
                    )
                )
            yield self._reader

    def read(self, partition: TopicPartition, offset: int, max_records: int) -> list[Record]:
        self._require_topics([partition.topic])
        start = max(offset, self._list_offsets([partition], _EARLIEST)[partition])
        end = self._list_offsets([partition], _LATEST)[partition]
        if max_records <= 0 or start >= end:
            return []
        wanted = min(max_records, end - start)
        records: list[Record] = []
        deadline = time.monotonic() + self.settings.request_timeout
        with self._reading() as reader:
            reader.assign([ck.TopicPartition(partition.topic, partition.partition, start)])
            try:
                done = False
                while not done and len(records) < wanted:
                    if time.monotonic() > deadline:
                        raise BackendUnavailableError(
                            f"Kafka at {self.settings.bootstrap_servers} did not send "
                            f"{partition} from offset {start} within "
                            f"{self.settings.request_timeout:g}s; try again"
                        )
                    # short waits: consume() waits out its timeout when the batch falls short,
                    # as it does where offsets have gaps (compaction, transaction markers)
                    for message in reader.consume(wanted - len(records), 0.1):
                        error = message.error()
                        if error is not None:
                            if error.code() != ck.KafkaError._PARTITION_EOF:
                                raise consumer_error(error)
                            done = True
                            continue
                        record = to_record(message)
                        records.append(record)
                        done = done or record.offset >= end - 1
            finally:
                reader.unassign()
        return records[:max_records]

    def offsets(self, topic: str) -> dict[int, PartitionOffsets]:
        partitions = [TopicPartition(topic, p) for p in range(self.partition_count(topic))]
        starts = self._list_offsets(partitions, _EARLIEST)
        ends = self._list_offsets(partitions, _LATEST)
        return {tp.partition: PartitionOffsets(starts[tp], ends[tp]) for tp in partitions}

    def _list_offsets(
        self, partitions: Sequence[TopicPartition], spec: OffsetSpec
    ) -> dict[TopicPartition, int]:
        futures = self._admin.list_offsets(
            {ck.TopicPartition(tp.topic, tp.partition): spec for tp in partitions},
            request_timeout=self.settings.request_timeout,
        )
        try:
            found = {
                TopicPartition(key.topic, key.partition): future.result().offset
                for key, future in futures.items()
            }
        except ck.KafkaException as exc:
            if error_code(exc) in MISSING_TOPIC:
                raise self._missing(partitions[0].topic) from None
            raise self._unavailable(f"list offsets of {partitions[0].topic!r}", exc) from None
        unknown = sorted(tp.partition for tp, offset in found.items() if offset < 0)
        if unknown:  # -1001 with no error: seen while a killed broker's partitions moved
            raise BackendUnavailableError(
                f"Kafka at {self.settings.bootstrap_servers} gave no offset for partition(s) "
                f"{unknown} of {partitions[0].topic!r}; their leaders may be moving"
            )
        return found

    def committed(self, group: str, topic: str) -> dict[int, int]:
        partitions = [ck.TopicPartition(topic, p) for p in range(self.partition_count(topic))]
        futures = self._admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, partitions)],
            request_timeout=self.settings.request_timeout,
        )
        try:
            found = futures[group].result().topic_partitions
        except ck.KafkaException as exc:
            raise self._unavailable(f"list the offsets of group {group!r}", exc) from None
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}

    # -- consume --------------------------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        spread: bool = False,
    ) -> KafkaConsumer:
        """A consumer made to `spread` fetches less of a partition at a time (64 KiB unless
        `max.partition.fetch.bytes` is set), so that what librdkafka has fetched, which is
        all a poll can share out, holds records of more partitions."""
        self._require_topics(topics)
        config = self._config(
            {
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "queued.max.messages.kbytes": 16384,
                "on_commit": on_commit,
            },
            self.settings.consumer,
        )
        configured = {**self.settings.client, **self.settings.consumer}
        if spread and "max.partition.fetch.bytes" not in configured:
            config["max.partition.fetch.bytes"] = _SPREAD_FETCH_BYTES
        if config.get("group.protocol") == "consumer":
            # KIP-848: the broker assigns partitions (always incrementally) and owns timeouts
            for name in (
                "partition.assignment.strategy",
                "session.timeout.ms",
                "heartbeat.interval.ms",
            ):
                config.pop(name, None)
        elif config["partition.assignment.strategy"] != "cooperative-sticky":
            raise ConfigurationError(
                "Loglane's Kafka consumer needs partition.assignment.strategy="
                "cooperative-sticky (or group.protocol=consumer); remove the override"
            )
        return KafkaConsumer(ck.Consumer(config), topics, listener, spread=spread)

    def close(self) -> None:
        with self._producer_lock:
            if self._producer is not None:
                remaining = self._producer.flush(self.settings.request_timeout)
                if remaining:
                    logger.warning("closed with %d records not confirmed by Kafka", remaining)
                self._producer = None
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


def _size(message: Message) -> int:
    return len(message.value)


class _Publishing:
    """Records handed to the producer, their delivery reports counted as librdkafka serves
    them; `wait` flushes until every one has its report."""

    def __init__(self, log: KafkaLog, messages: Sequence[Message]) -> None:
        self._log = log
        self._messages = messages
        self._reported = 0
        self._failures = 0
        self._failure: tuple[ck.KafkaError, str] | None = None

    def report(self, error: ck.KafkaError | None, delivered: ck.Message) -> None:
        self._reported += 1
        if error is not None:
            self._failures += 1
            if self._failure is None:
                self._failure = (error, cast(str, delivered.topic()))

    def wait(self) -> None:
        log, total = self._log, len(self._messages)
        with log._producer_lock:
            producer = log._producer_client()
            try:
                while self._reported < total and producer.flush(1.0) > 0:
                    pass
            except ck.KafkaException as exc:
                log._discard_if_fatal(error_of(exc))
                raise log._unavailable(f"publish to {self._messages[0].topic!r}", exc) from None
        if self._failure is not None:
            error, topic = self._failure
            # the largest of the topic's: a record too large is the likeliest failure to name
            message = max((m for m in self._messages if m.topic == topic), key=_size)
            raise log._delivery_failed(message, error, self._failures, total)
        if self._reported < total:
            raise log._delivery_failed(self._messages[0], None, total - self._reported, total)
