"""The worker: consume a service's topics in order and materialize them, exactly once in effect.

One pass of the loop (`run_once`), top to bottom:

1. poll records from the partitions this worker owns;
2. per partition, run the handlers in offset order against a unit of work;
3. commit the view changes, the new input position, the outbox rows, request outcomes and the
   ids of applied events in ONE store transaction, fenced on the position the batch began at;
4. publish the committed outbox rows to the log (`<service>.out`, `<service>.dlq`);
5. commit the log's consumer offsets last, so they trail the store, never lead it.

Positions live in the store: on start, or when a partition is assigned, the worker reads
them there and seeks the log to them. A crash anywhere replays at most the uncommitted batch,
whose effects were never written; outbox rows committed but not yet published are published
again (same ids) when the partition is next assigned, and consumers drop the duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from loglane.dedupe import AppliedWindow
from loglane.dlq import ERROR_HEADER, ORIGIN_HEADER, SOURCE_HEADER
from loglane.envelope import Envelope, now_rfc3339, read_envelope
from loglane.errors import (
    BackendUnavailableError,
    ConfigurationError,
    EnvelopeError,
    StaleBatchError,
)
from loglane.events import Event
from loglane.faults import crash_point
from loglane.logs.base import Consumer, Log
from loglane.records import Message, Record, TopicPartition
from loglane.service import Handler, Service
from loglane.stores.base import Batch, RequestOutcome, RequestStatus, Store
from loglane.transaction import Transaction, UnitOfWork

logger = logging.getLogger("loglane.worker")

_OUTBOX_CHUNK = 1000


class Worker:
    """Runs one service's handlers over the partitions its consumer group member owns."""

    def __init__(
        self,
        service: Service,
        log: Log,
        store: Store,
        *,
        batch_size: int = 1000,
        poll_timeout: float = 0.5,
        dedupe_window: int = 100_000,
        on_commit: Callable[[Batch], None] | None = None,
    ) -> None:
        """`on_commit`, if given, is called on the worker's thread with every batch right
        after the store committed it (before its events are published): an HTTP API in the
        same process uses it to answer waiting requests without polling the store."""
        self.service = service
        self.log = log
        self.store = store
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.dedupe_window = dedupe_window
        self._consumer: Consumer | None = None
        self._positions: dict[TopicPartition, int | None] = {}
        self._published: dict[TopicPartition, int] = {}
        self._applied: dict[TopicPartition, AppliedWindow] = {}
        self._log_offsets: dict[TopicPartition, int] = {}
        self._async: asyncio.Runner | None = None
        self.on_commit = on_commit
        self.handled = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the service's topics and tables, then join its consumer group."""
        ensure_topics(self.log, [self.service])
        self.store.prepare(self.service.name, list(self.service.views.values()))
        self._consumer = self.log.consumer(self.service.name, self.service.topics, self)

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; back off and recover while a backend is unreachable."""
        self.start()
        backoff = 0.1
        recovering = False
        try:
            while not stop.is_set():
                try:
                    if recovering:  # the failed batch may or may not have committed
                        self._resume(sorted(self._positions))
                        recovering = False
                    self.run_once()
                    backoff = 0.1
                except BackendUnavailableError as exc:
                    logger.warning(
                        "backend unavailable, retrying in %.1fs: %s",
                        backoff,
                        exc,
                        extra={"service": self.service.name},
                    )
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    recovering = True
        finally:
            self.close()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._async is not None:
            self._async.close()
            self._async = None

    # -- the loop -------------------------------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> int:
        """One poll, handle, commit, publish pass; returns how many records it took."""
        consumer = self._require_consumer()
        records = consumer.poll(self.poll_timeout if timeout is None else timeout, self.batch_size)
        crash_point("after_poll")
        committed: list[tuple[TopicPartition, int | None, list[Message]]] = []
        for source, batch in _by_partition(records).items():
            outcome = self._process(source, batch)
            if outcome is not None:
                committed.append(outcome)
        crash_point("after_commit")
        self._publish(committed)
        crash_point("after_publish")
        if self._log_offsets:
            consumer.commit(self._log_offsets)
            self._log_offsets = {}
            crash_point("after_log_commit")
        if not records and self._published:
            self.store.delete_outbox(self.service.name, self._published)
            self._published = {}
        return len(records)

    def _process(
        self, source: TopicPartition, records: list[Record]
    ) -> tuple[TopicPartition, int | None, list[Message]] | None:
        """Handle one partition's records and commit them; None if nothing was committed."""
        if source not in self._positions:
            return None  # revoked while these records were in flight
        expected = self._positions[source]
        records = [record for record in records if record.offset >= (expected or 0)]
        if not records:
            return None
        batch = Batch(
            service=self.service.name,
            source=source,
            expected_position=expected,
            position=records[-1].offset + 1,
            published_upto=self._published.pop(source, None),
        )
        unit = UnitOfWork(self.store)
        batch_time = now_rfc3339()
        applied = self._applied[source]
        in_batch: set[str] = set()
        for record in records:
            try:
                envelope = read_envelope(record)
            except EnvelopeError as exc:
                batch.outbox.append(self._dead_letter(record, str(exc)))
                continue
            if envelope.id in applied or envelope.id in in_batch:
                continue  # a duplicate: the event was applied already
            in_batch.add(envelope.id)
            self._handle(record, envelope, unit, batch, batch_time)
        batch.writes = unit.writes
        batch.forget_applied_before = applied.horizon(batch.position)
        batch.statements = unit.statements
        try:
            last_seq = self.store.commit(batch)
        except StaleBatchError as exc:
            logger.warning("%s", exc, extra={"service": self.service.name})
            self._resume([source])
            return None
        self._positions[source] = batch.position
        self._log_offsets[source] = batch.position
        applied.add(batch.position, batch.applied_ids)
        self.handled += len(records)
        if self.on_commit is not None:
            self._tell_committed(self.on_commit, batch)
        return source, last_seq, batch.outbox

    def _tell_committed(self, listener: Callable[[Batch], None], batch: Batch) -> None:
        # The batch is durable whatever the listener does; a failing listener must not stop
        # the partition, so its error is logged and the loop goes on.
        try:
            listener(batch)
        except Exception:
            logger.exception("on_commit listener failed", extra={"service": self.service.name})

    def _handle(
        self, record: Record, envelope: Envelope, unit: UnitOfWork, batch: Batch, time_: str
    ) -> None:
        """Run the event's handler, with retries; what cannot be handled goes to the DLQ."""
        handler = self.service.handler_for(record.topic, envelope.type)
        is_command = record.topic == self.service.input_topic
        origin = record.header(ORIGIN_HEADER) if handler is None and is_command else None
        if origin is not None:  # a re-driven dead letter from another service's output
            handler = self.service.handler_for(origin.decode(), envelope.type)
            is_command = False
        if handler is None and not is_command:
            return  # another service's event that this one does not subscribe to
        batch.applied_ids.append(envelope.id)
        if handler is None:
            accepted = ", ".join(sorted(self.service.commands)) or "none"
            self._fail(
                record,
                envelope,
                batch,
                f"unknown command type {envelope.type!r}; accepted: {accepted}",
            )
            return
        try:
            event = handler.event_type.model_validate_json(envelope.data)
        except ValidationError as exc:
            self._fail(record, envelope, batch, f"invalid {envelope.type}: {exc}")
            return
        retry = self.service.retry
        for attempt in range(retry.attempts):
            tx = Transaction(
                unit=unit,
                service=self.service.name,
                output_topic=self.service.output_topic,
                cause=envelope,
                key=record.key,
                time=time_,
            )
            try:
                self._call(handler, event, tx)
            except BackendUnavailableError:
                raise
            except Exception as exc:
                if attempt + 1 < retry.attempts:
                    time.sleep(retry.delay(attempt))
                    continue
                self._fail(
                    record, envelope, batch, f"handler failed {retry.attempts} times: {exc!r}"
                )
                return
            if tx.rejection is None:
                unit.absorb(tx)
            batch.outbox.extend(tx.messages)
            if is_command:
                batch.requests.append(
                    RequestOutcome(
                        request_id=tx.request_id,
                        status=RequestStatus.DONE
                        if tx.rejection is None
                        else RequestStatus.REJECTED,
                        event_ids=tuple(tx.event_ids),
                        detail=tx.rejection,
                        events=tuple(tx.messages),
                    )
                )
            return

    def _call(self, handler: Handler, event: Event, tx: Transaction) -> None:
        if handler.is_async:
            if self._async is None:
                self._async = asyncio.Runner()
            self._async.run(handler.func(event, tx))
        else:
            handler.func(event, tx)

    def _fail(self, record: Record, envelope: Envelope, batch: Batch, error: str) -> None:
        """Dead-letter the record and, for a command, mark its request failed."""
        logger.warning(
            "dead-lettered %s: %s",
            record.topic_partition,
            error,
            extra={
                "service": self.service.name,
                "offset": record.offset,
                "request_id": envelope.correlation_id or envelope.id,
            },
        )
        batch.outbox.append(self._dead_letter(record, error))
        if record.topic == self.service.input_topic:
            batch.requests.append(
                RequestOutcome(
                    request_id=envelope.correlation_id or envelope.id,
                    status=RequestStatus.FAILED,
                    detail=error,
                )
            )

    def _dead_letter(self, record: Record, error: str) -> Message:
        """The record as it was, plus headers that say where it came from and why it failed."""
        headers = (
            *record.headers,
            (ERROR_HEADER, error.encode()),
            (SOURCE_HEADER, f"{record.topic}:{record.partition}:{record.offset}".encode()),
        )
        return Message(self.service.dlq_topic, record.key, record.value, headers)

    # -- after commit ---------------------------------------------------------------------------

    def _publish(
        self, committed: Sequence[tuple[TopicPartition, int | None, list[Message]]]
    ) -> None:
        """Publish what the batches committed; their outbox rows are deleted with the next batch."""
        messages = [message for _, _, batch_messages in committed for message in batch_messages]
        if messages:
            self.log.append(messages)
        for source, last_seq, _ in committed:
            if last_seq is not None:
                self._published[source] = last_seq

    # -- partitions coming and going ------------------------------------------------------------

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        logger.info(
            "assigned %s", ", ".join(map(str, partitions)), extra={"service": self.service.name}
        )
        self._resume(partitions)

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        logger.info(
            "revoked %s", ", ".join(map(str, partitions)), extra={"service": self.service.name}
        )
        crash_point("in_revoke")
        published = {tp: self._published.pop(tp) for tp in partitions if tp in self._published}
        if published:
            self.store.delete_outbox(self.service.name, published)
        for tp in partitions:
            self._positions.pop(tp, None)
            self._log_offsets.pop(tp, None)
            self._applied.pop(tp, None)

    def _resume(self, partitions: Sequence[TopicPartition]) -> None:
        """Seek `partitions` to their stored positions and publish what their outbox holds."""
        consumer = self._require_consumer()
        stored = self.store.positions(self.service.name)
        for tp in partitions:
            position = stored.get(tp, 0)
            self._positions[tp] = stored.get(tp)
            consumer.seek(tp, position)
            self._published.pop(tp, None)
            recent = self.store.applied(self.service.name, tp, position - self.dedupe_window)
            self._applied[tp] = AppliedWindow(self.dedupe_window, recent)
        crash_point("in_assign")
        self._flush_outbox(partitions)

    def _flush_outbox(self, partitions: Sequence[TopicPartition]) -> None:
        """Publish outbox rows a crash left behind (same ids as before), then delete them."""
        while entries := self.store.outbox(self.service.name, partitions, _OUTBOX_CHUNK):
            self.log.append([entry.message for entry in entries])
            last: dict[TopicPartition, int] = {}
            for entry in entries:
                last[entry.source] = entry.seq
            self.store.delete_outbox(self.service.name, last)
            logger.info(
                "republished %d outbox rows", len(entries), extra={"service": self.service.name}
            )

    def _require_consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the worker is not started; call start() first")
        return self._consumer


def _by_partition(records: list[Record]) -> dict[TopicPartition, list[Record]]:
    batches: dict[TopicPartition, list[Record]] = {}
    for record in records:
        batches.setdefault(record.topic_partition, []).append(record)
    return batches


def ensure_topics(log: Log, services: Sequence[Service]) -> None:
    """Create each service's input, output and DLQ topics, and the outputs they consume."""
    for service in services:
        for topic in (service.input_topic, service.output_topic, service.dlq_topic):
            log.create_topic(topic, service.partitions)
    for service in services:
        for topic in service.topics[1:]:
            try:
                log.partition_count(topic)
            except ConfigurationError:
                log.create_topic(topic, service.partitions)
