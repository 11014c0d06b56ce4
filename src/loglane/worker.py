"""The worker: consume a service's topics in order and materialize them, exactly once in effect.

One pass of the loop (`run_once`), top to bottom:

1. poll records from the partitions this worker owns, and read their envelopes and events;
2. open ONE store transaction for the batches of every partition polled, fenced on the
   position each began at, and run the handlers, each partition's in offset order, against
   one unit of work whose reads come from it (coroutine handlers of different partitions
   side by side, on one event loop; see `loglane.transaction`);
3. write the view changes, the new input positions, the outbox rows, request outcomes and
   the ids of applied events in that transaction, mark published the outbox rows the log has
   acknowledged since the last commit, and commit;
4. hand the committed outbox rows to the log (`<service>.out`, `<service>.dlq`) without
   waiting: the next pass polls and runs its handlers while the log acknowledges them, and
   waits for that just before its own commit, which deletes them from the outbox;
5. commit the log's consumer offsets, which trail the store, never lead it.

The loop (`run`) sends each commit ahead: the store commits while the next pass polls and
reads its records (step 1); that pass then confirms the commit and goes on with its own
steps 2 and 3, and once its own commit is sent, hands on what the last one committed (step
4, and step 5 without waiting for Kafka's answer), so the log is fed while the store
commits. If the commit failed, its batches run again at once, committed the way `run_once`
commits them.

If the store refuses the transaction (a value it cannot hold, a handler's failing SQL), the
partitions are committed one by one, and a refused batch is halved until the event at fault
stands alone; that event goes to the DLQ and the rest commit.

Positions live in the store: on start, or when a partition is assigned, the worker reads
them there and seeks the log to them. A crash anywhere replays at most the uncommitted
batches, whose effects were never written; outbox rows committed but not yet marked
published are published again (same ids) when the partition is next assigned, and consumers
drop the duplicates (`loglane.dedupe`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError

from loglane import tracing
from loglane.dedupe import AppliedWindow, identity, seen_before
from loglane.dlq import ERROR_HEADER, ORIGIN_HEADER, SOURCE_HEADER
from loglane.envelope import Envelope, identifying_envelope, now_rfc3339, read_envelope
from loglane.errors import (
    BackendUnavailableError,
    BatchConflictError,
    BatchRejectedError,
    ConfigurationError,
    EnvelopeError,
    PositionAheadOfLogError,
    StaleBatchError,
)
from loglane.events import Event, EventVersionError
from loglane.faults import crash_point
from loglane.logs.base import Consumer, Log, Publishing
from loglane.metrics import ServiceMeters
from loglane.parking import REDRIVEN_HEADER, UNPARK_HEADER, UNPARK_TYPE, key_of, place
from loglane.records import Message, Record, TopicPartition, decode_record, encode_record
from loglane.service import Handler, Service
from loglane.stores.base import (
    Batch,
    PendingCommit,
    RequestOutcome,
    RequestStatus,
    Store,
    StoreTransaction,
    Watermarks,
)
from loglane.transaction import CommandRejected, Emitter, Transaction, UnitOfWork
from loglane.views import Key, View

logger = logging.getLogger("loglane.worker")

# errors after which the batch's store transaction is gone: the whole batch runs again
_BATCH_GONE = (BackendUnavailableError, BatchConflictError, BatchRejectedError)

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
        group: str | None = None,
        replay: bool = False,
    ) -> None:
        """`on_commit`, if given, is called on the worker's thread with every batch right
        after the store committed it (before its events are published): an HTTP API in the
        same process uses it to answer waiting requests without polling the store.

        `group` is the consumer group to join (default: the service's name). A worker that
        `replay`s the log into views of its own (`loglane rebuild`) changes only them and
        its positions: it writes no outbox rows and no request outcomes, and an event its
        handler fails on is logged and passed over (its key parked, as it was live), not
        dead-lettered again.
        """
        self.service = service
        self.log = log
        self.store = store
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.dedupe_window = dedupe_window
        self.group = group or service.name
        self.replay = replay
        self._consumer: Consumer | None = None
        self._owned: dict[TopicPartition, _Owned] = {}  # what it keeps of each partition
        # the parked keys of each partition as the transaction being run changes them
        self._parking: dict[TopicPartition, dict[str, str]] = {}
        # the views each handler was seen to read at its event's key: prefetched per batch
        self._keyed_reads: dict[Handler, set[View[Any]]] = {}
        self._log_offsets: dict[TopicPartition, int] = {}
        # outbox rows handed to the log, by source up to a seq: not yet acknowledged (in
        # flight), then acknowledged but still in the outbox (published)
        self._publishing: Publishing | None = None
        self._in_flight: dict[TopicPartition, int] = {}
        self._published: dict[TopicPartition, int] = {}
        self._async: asyncio.Runner | None = None
        self._any_async = any(handler.is_async for handler in service.handlers)
        self._sent: _Sent | None = None  # the commit sent ahead, not yet confirmed
        self._unsure = False  # a revocation failed to confirm or publish: resume the kept
        self._reads: dict[int, _Read] = {}  # by id(record): this pass's records, read as polled
        self._sought: set[TopicPartition] = set()  # seeked back by `_resume` since the poll
        self.on_commit = on_commit
        self.meters = ServiceMeters(service.name)
        self.trouble: str | None = None
        """Why the last pass failed, until a pass succeeds: what `/readyz` reports."""
        self.handled = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the service's topics and tables, then join its consumer group."""
        ensure_topics(self.log, [self.service])
        views = list(self.service.views.values())
        self.store.prepare(self.service.name, views, self.service.migrations)
        topics = self.service.topics
        self._consumer = self.log.consumer(self.group, topics, self, spread=self._any_async)

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; back off and recover while a backend is unreachable.

        Only a `ConfigurationError` ends the loop: any other error rolls the batch back, is
        logged with its traceback, and the partitions resume from their stored positions.
        """
        self.start()
        backoff = 0.1
        recovering = False
        try:
            while not stop.is_set():
                try:
                    if recovering:  # the failed batch may or may not have committed
                        self._hand_on(self._confirm())  # one sent ahead is known first
                        self._resume(sorted(self._owned))
                        recovering = False
                    self.run_once(send_ahead=True)
                    self.trouble = None
                    backoff = 0.1
                except ConfigurationError:
                    raise
                except Exception as exc:
                    self.trouble = f"{type(exc).__name__}: {exc}"
                    extra = {"service": self.service.name}
                    if isinstance(exc, BackendUnavailableError):
                        logger.warning(
                            "backend unavailable, retrying in %.1fs: %s", backoff, exc, extra=extra
                        )
                    else:
                        logger.exception("worker error, retrying in %.1fs", backoff, extra=extra)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    recovering = True
        finally:
            self.close()

    @property
    def unready(self) -> str | None:
        """None while the worker runs its passes, else why it does not."""
        if self._consumer is None:
            return "not running (starting, or stopped)"
        return self.trouble

    def close(self) -> None:
        try:
            self._hand_on(self._confirm())
            self._settle()
            self._forget_published(list(self._published))
            self._commit_offsets()
        except Exception as exc:  # published again by the partitions' next owner
            logger.warning("closing with publishes unconfirmed: %s", exc)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._async is not None:
            self._async.close()
            self._async = None

    # -- the loop -------------------------------------------------------------------------------

    def run_once(self, timeout: float | None = None, *, send_ahead: bool = False) -> int:
        """One poll, handle, commit, publish pass; returns how many records it took. With
        `send_ahead`, as `run` makes them, the commit is confirmed and handed on by the next
        pass (or `close`), after that one's poll."""
        consumer = self._require_consumer()
        if self._sent is not None:
            timeout = 0  # a commit waits to be confirmed: take only what has arrived
        timeout = self.poll_timeout if timeout is None else timeout
        records = consumer.poll(timeout, self.batch_size)
        crash_point("after_poll")
        self._reads = {id(record): self._read(record) for record in records}
        parts = _by_partition(records)
        self._sought.clear()
        if self._unsure:  # a revocation in the poll could not confirm or publish the last pass
            self._unsure = False
            self._resume(sorted(self._owned))
        confirmed = self._confirm()  # the last pass's commit; it ran while the above did
        for source in self._sought:  # running it again found it moved: its records come again
            parts.pop(source, None)
        if not parts:
            self._hand_on(confirmed, wait=not send_ahead)
            if not confirmed:  # idle: let the last publish land and forget its outbox rows now
                self._settle()
                self._forget_published(list(self._published))
                self._commit_offsets()
            return 0
        # What the last commit holds goes out once this pass's commit is sent: with commits
        # sent ahead, the database commits while the worker publishes. (Should this pass
        # fail first, the outbox still holds it, for `_resume` to publish.)
        committed = self._commit_poll(parts, send_ahead=send_ahead)
        # a partition found moved meanwhile published its outbox, the last commit's rows
        # with it, as it resumed (`_resume`): those go out once
        confirmed = [batch for batch in confirmed if batch.source not in self._sought]
        self._hand_on(confirmed + committed, wait=not send_ahead)
        return sum(len(part) for part in parts.values())

    def _hand_on(
        self, committed: list[Committed], *, offsets: bool = True, wait: bool = True
    ) -> None:
        """Publish what the store committed, then commit the log's offsets up to it (not
        inside a rebalance callback: a commit there makes librdkafka rejoin the group).

        Passes that send their commits ahead (`run`) commit the log's offsets without
        `wait`ing: they only tell the group's lag, and the store holds the positions. Such
        offsets stay in `_log_offsets` until a commit that waits has them: when the worker
        goes idle, or closes."""
        if not committed:
            return
        crash_point("after_commit")
        self._publish(committed)
        if offsets and self._log_offsets:
            if wait:
                self._commit_offsets()
            else:
                self._require_consumer().commit(self._log_offsets, wait=False)
            crash_point("after_log_commit")

    def _commit_offsets(self) -> None:
        """Commit the log's offsets, and wait: also those committed before without waiting."""
        if self._log_offsets and self._consumer is not None:
            self._consumer.commit(self._log_offsets)
            self._log_offsets = {}

    def _commit_poll(
        self, parts: dict[TopicPartition, list[Record]], *, send_ahead: bool = False
    ) -> list[Committed]:
        """Commit the batches of every partition polled in one transaction; if the store
        refuses it, or one partition moved away, commit them one partition at a time. With
        `send_ahead`, the commit of one transaction is left to `_confirm`."""
        if len(parts) > 1 or send_ahead:
            try:
                return self._commit(parts, {}, send_ahead=send_ahead)
            except (BatchRejectedError, StaleBatchError) as exc:
                logger.info("committing partition by partition: %s", exc)
        committed: list[Committed] = []
        for source, records in parts.items():
            committed.extend(self._commit_isolating(source, records, {}))
        return committed

    def _confirm(self, *, rerun: bool = True) -> list[Committed]:
        """Wait for the commit sent ahead; what it committed. If the store refused it, its
        records run again now, each partition's on its own if need be; not in a rebalance
        callback (`rerun` false), which raises instead: run there, they could resume a
        partition whose further records the poll has fetched already (`on_revoked`)."""
        sent, self._sent = self._sent, None
        if sent is None:
            return []
        try:
            seqs = self._wait(sent)
        except (BatchConflictError, BatchRejectedError) as exc:
            if isinstance(exc, BatchConflictError):
                self.meters.conflict()
            if not rerun:
                raise
            logger.info("the commit sent ahead failed, running its batches again: %s", exc)
            return self._commit_poll(sent.polled)
        return self._committed(sent, seqs)

    def _commit_isolating(
        self, source: TopicPartition, records: list[Record], poison: dict[int, str]
    ) -> list[Committed]:
        """Commit `records`; if the store refuses them, halve the batch until the refused
        event stands alone, dead-letter it with the store's reason, and commit the rest."""
        try:
            return self._commit({source: records}, poison)
        except BatchRejectedError as exc:
            if len(records) == 1:
                reason = f"the store refused its changes: {exc}"
                return self._commit({source: records}, {records[0].offset: reason})
            middle = len(records) // 2
            return self._commit_isolating(
                source, records[:middle], poison
            ) + self._commit_isolating(source, records[middle:], poison)

    def _commit(
        self,
        polled: dict[TopicPartition, list[Record]],
        poison: dict[int, str],
        *,
        send_ahead: bool = False,
    ) -> list[Committed]:
        """Handle the records of each partition in one store transaction and commit them.

        Records in `poison` (by offset; with one partition only) are dead-lettered with the
        reason given instead of handled. Partitions revoked meanwhile are left out; one
        found moved away is resumed from its stored position, or with several partitions
        (or `send_ahead`) the `StaleBatchError` is raised. With `send_ahead`, the commit is
        sent, and left to `_confirm`.
        """
        parts = {source: self._unseen(source, records) for source, records in polled.items()}
        parts = {source: records for source, records in parts.items() if records}
        if not parts:
            return []
        owned = {source: self._owned[source] for source in parts}
        fences = {source: partition.position for source, partition in owned.items()}
        while True:
            batches = {
                source: Batch(
                    service=self.service.name,
                    source=source,
                    expected_position=fences[source],
                    position=records[-1].offset + 1,
                    forget_applied_before=owned[source].applied.horizon(records[-1].offset + 1),
                )
                for source, records in parts.items()
            }
            origins = {source: dict(partition.origins) for source, partition in owned.items()}
            self._parking = {source: dict(partition.parked) for source, partition in owned.items()}
            self.meters.tally.clear()
            try:
                with self.store.transaction(self.service.name, fences) as store_tx:
                    unit = UnitOfWork(store_tx)
                    self._handle_all(parts, batches, unit, store_tx, poison, origins)
                    last = batches[next(reversed(batches))]
                    last.writes, last.statements = unit.writes, unit.statements
                    for source, batch in batches.items():
                        if origins[source] != owned[source].origins:
                            batch.origins = origins[source]
                    if not send_ahead:  # the rows of the last publish go with this commit
                        self._settle()  # (sent ahead, it forgets those that have landed)
                    published = dict(self._published)
                    started = time.perf_counter()
                    commit = store_tx.send_all(list(batches.values()), published)
                    crash_point("in_commit")
                sending = time.perf_counter() - started  # a store may commit as it ends
                sent = _Sent(
                    polled,
                    parts,
                    batches,
                    origins,
                    self._parking,
                    published,
                    self.meters.tally.copy(),
                    sending,
                    commit,
                )
                if send_ahead:
                    self._sent = sent
                    return []
                return self._committed(sent, self._wait(sent))
            except StaleBatchError as exc:
                if len(parts) > 1 or send_ahead:
                    raise
                logger.warning("%s", exc, extra={"service": self.service.name})
                self._resume(list(parts))
                return []
            except BatchConflictError as exc:
                self.meters.conflict()
                logger.info("batches of %s ran again: %s", ", ".join(map(str, parts)), exc)

    def _wait(self, sent: _Sent) -> dict[TopicPartition, int]:
        """Wait for `sent`'s commit; meter the time the worker spent on it, waits included."""
        started = time.perf_counter()
        try:
            return sent.commit.wait()
        finally:
            sent.spent += time.perf_counter() - started

    def _committed(self, sent: _Sent, seqs: dict[TopicPartition, int]) -> list[Committed]:
        """Take in what the store committed: positions, watermarks, parked keys and applied
        ids move on; the outbox rows published before are forgotten."""
        count = sum(len(records) for records in sent.parts.values())
        self.meters.committed(count, sent.spent, sent.tally)
        self._published = {
            source: seq
            for source, seq in self._published.items()
            if sent.published.get(source) != seq
        }
        committed: list[Committed] = []
        for source, batch in sent.batches.items():
            partition = self._owned[source]
            partition.position = batch.position
            partition.origins = sent.origins[source]
            partition.parked = sent.parking[source]
            partition.applied.add(batch.position, batch.applied_ids)
            self._log_offsets[source] = batch.position
            self.handled += len(sent.parts[source])
            if self.on_commit is not None:
                self._tell_committed(self.on_commit, batch)
            committed.append(Committed(source, seqs.get(source), batch.outbox))
        return committed

    def _unseen(self, source: TopicPartition, records: list[Record]) -> list[Record]:
        """The records of `source` at or beyond its stored position; none if revoked."""
        if source not in self._owned:
            return []  # revoked while these records were in flight
        expected = self._owned[source].position
        ahead = [record for record in records if record.offset >= (expected or 0)]
        if len(ahead) < len(records) and expected is not None:
            # records below the stored position: stale fetches after a seek, or a log that
            # was recreated under the store and reset to its start
            self._check_within_log([source], {source: expected})
        return ahead

    def _handle_all(
        self,
        parts: dict[TopicPartition, list[Record]],
        batches: dict[TopicPartition, Batch],
        unit: UnitOfWork,
        store_tx: StoreTransaction,
        poison: dict[int, str],
        origins: dict[TopicPartition, Watermarks],
    ) -> None:
        """Run the handlers of each partition's records in offset order, skipping events
        applied before.

        Batch first: every record is decoded and validated, then the view rows its handler
        is known to read at its key are fetched in one query per view, then the handlers run.
        A command of a parked key waits (`loglane.parking`) unless it is the key's dead
        letter, re-driven; if that one passes, the commands that waited run after it.
        When some handlers are coroutines, the partitions' records are stepped through side
        by side (`_side_by_side`), so one partition's handler awaiting a reply does not hold
        the others up.
        """
        decoded = {
            source: self._decode(
                records, batches[source], poison, self._owned[source].applied, origins[source]
            )
            for source, records in parts.items()
        }
        self._prefetch([work for works in decoded.values() for work in works], unit)
        emitter = Emitter.of(self.service.name, self.service.output_topic, now_rfc3339())
        if self._side_by_side(decoded):
            steps = [
                self._step_partition(works, source, batches[source], unit, store_tx, emitter)
                for source, works in decoded.items()
            ]
            self._run_async(_all_of(steps))
            return
        for source, works in decoded.items():
            for work in works:
                self._step(work, source, batches[source], unit, store_tx, emitter)

    def _step(
        self,
        work: _Work | _Refused | _Release,
        source: TopicPartition,
        batch: Batch,
        unit: UnitOfWork,
        store_tx: StoreTransaction,
        emitter: Emitter,
    ) -> None:
        """Handle one record of the batch: run its handler, dead-letter it, or let it wait
        behind its key's dead letter."""
        record = work.record
        if isinstance(work, _Release):  # the head of its key was dropped
            self._release(work.key, work.head, source, batch, store_tx, unit)
            return
        parked = self._parked_head(record, self._parking[source])
        if parked is not None and record.header(REDRIVEN_HEADER) != parked[1].encode():
            batch.parked_records.append((parked[0], record.offset, encode_record(record)))
            return  # it waits behind the head of its key
        if isinstance(work, _Refused):
            self._fail(record, work.envelope, batch, work.reason)
        else:
            self._handle(work, unit, batch, emitter)
        if parked is not None:  # the head, re-driven: its key is free if it passed
            self._release(*parked, source, batch, store_tx, unit)

    def _side_by_side(
        self, decoded: dict[TopicPartition, list[_Work | _Refused | _Release]]
    ) -> bool:
        """Whether to run the poll's handlers on the event loop, each partition's in order
        and the partitions side by side: when some handlers are coroutines, and nothing in
        the poll can release a key parked behind a dead letter (`_release` runs the
        handlers of the records that waited, one at a time): no key of the polled
        partitions is parked, and no record is a control record or a re-driven one."""
        if not self._any_async or any(self._parking[source] for source in decoded):
            return False
        works = [work for part in decoded.values() for work in part]
        if any(
            isinstance(work, _Release) or work.record.header(REDRIVEN_HEADER) is not None
            for work in works
        ):
            return False
        return any(isinstance(work, _Work) and work.handler.is_async for work in works)

    async def _step_partition(
        self,
        works: list[_Work | _Refused | _Release],
        source: TopicPartition,
        batch: Batch,
        unit: UnitOfWork,
        store_tx: StoreTransaction,
        emitter: Emitter,
    ) -> None:
        """`_step` through one partition's records on the event loop, awaiting coroutine
        handlers, while other partitions' steps run whenever one awaits."""
        for work in works:
            if isinstance(work, _Work) and work.handler.is_async:
                parked = self._parked_head(work.record, self._parking[source])
                if parked is None:  # (a key parked by a failure in this batch: it waits)
                    await self._handle_beside_others(work, unit, batch, emitter)
                    continue
            self._step(work, source, batch, unit, store_tx, emitter)

    def _parked_head(self, record: Record, parking: dict[str, str]) -> tuple[str, str] | None:
        """(key, place of its head) if `record`, whose partition parks `parking`, is a
        command of a parked key."""
        if not parking or record.topic != self.service.input_topic:
            return None  # the common case: no key waits, no key to decode
        key = key_of(record)
        head = None if key is None else parking.get(key)
        return None if key is None or head is None else (key, head)

    def _release(
        self,
        key: str,
        head: str,
        source: TopicPartition,
        batch: Batch,
        store_tx: StoreTransaction,
        unit: UnitOfWork,
    ) -> None:
        """Release `key` if `head` still heads it (it passed, or was dropped): run the
        records parked behind it, in order. One that fails is the key's new head, and those
        after it stay parked."""
        parking = self._parking[source]
        if parking.get(key) != head:
            return
        del parking[key]
        batch.unpark.append(key)
        waiting = store_tx.parked_records(self.service.name, source, key)
        waiting += [blob for k, _, blob in batch.parked_records if k == key]
        batch.parked_records = [entry for entry in batch.parked_records if entry[0] != key]
        emitter = Emitter.of(self.service.name, self.service.output_topic, now_rfc3339())
        for index, blob in enumerate(waiting):
            record = decode_record(blob)
            try:
                envelope = read_envelope(record)
            except EnvelopeError as exc:
                self._fail(record, None, batch, str(exc))
            else:
                work = self._work(record, envelope)
                if isinstance(work, _Work):
                    self._handle(work, unit, batch, emitter)
                elif work is not None:
                    self._fail(record, envelope, batch, work.reason)
            if key in parking:  # it failed: the rest wait behind it
                rest = [(key, decode_record(b).offset, b) for b in waiting[index + 1 :]]
                batch.parked_records.extend(rest)
                return

    def _decode(
        self,
        records: list[Record],
        batch: Batch,
        poison: dict[int, str],
        applied: AppliedWindow,
        origins: Watermarks,
    ) -> list[_Work | _Refused | _Release]:
        """The records to handle, each with its handler and validated event, the reason it
        goes to the DLQ instead, or the key it releases (a control record); duplicates and
        others' events left out. Whether a command waits behind its key's dead letter is
        decided when its turn comes (`_handle_all`), as a failure earlier in the batch may
        park its key."""
        works: list[_Work | _Refused | _Release] = []
        in_batch: set[str] = set()
        input_topic = self.service.input_topic
        for record in records:
            read = self._reads.pop(id(record), None)  # once: a batch run again reads anew
            if read is None or read.record is not record:
                read = self._read(record)
            envelope = read.envelope
            if isinstance(envelope, EnvelopeError):  # its request, if it names one, fails
                works.append(_Refused(record, identifying_envelope(record), str(envelope)))
                continue
            seen = None
            if envelope.origin is not None and record.topic != input_topic:
                seen = seen_before(origins, envelope.origin)
            if seen is None:
                event_identity = identity(envelope)
                seen = event_identity in applied or event_identity in in_batch
                if not seen:
                    in_batch.add(event_identity)
                    batch.applied_ids.append(event_identity)
            if seen:
                self.meters.tally["duplicate"] += 1
                continue  # a duplicate: the event was applied already
            reason = poison.get(record.offset)
            release = None
            if envelope.type == UNPARK_TYPE and record.topic == input_topic:
                release = record.header(UNPARK_HEADER)
            if release is not None:
                works.append(_Release(record, key_of(record) or "", release.decode()))
            elif reason is not None:
                works.append(_Refused(record, envelope, reason))
            elif read.work is not None:
                works.append(read.work)
        return works

    def _read(self, record: Record) -> _Read:
        """The record's envelope (or why it has none) and what handling it takes: the part
        of decoding that depends on the record alone, done as it is polled."""
        try:
            envelope = read_envelope(record)
        except EnvelopeError as exc:
            return _Read(record, exc, None)
        return _Read(record, envelope, self._work(record, envelope))

    def _work(self, record: Record, envelope: Envelope) -> _Work | _Refused | None:
        """The record's handler and validated event, why it is refused, or None if this
        service does not subscribe to it."""
        handler = self.service.handler_for(record.topic, envelope.type)
        is_command = record.topic == self.service.input_topic
        origin = record.header(ORIGIN_HEADER) if handler is None and is_command else None
        if origin is not None:  # a re-driven dead letter from another service's output
            handler = self.service.handler_for(origin.decode(), envelope.type)
            is_command = False
        if handler is None and not is_command:
            return None  # another service's event that this one does not subscribe to
        if handler is None:
            accepted = ", ".join(sorted(self.service.commands)) or "none"
            reason = f"unknown command type {envelope.type!r}; accepted: {accepted}"
            return _Refused(record, envelope, reason)
        try:
            event = _event_of(handler.event_type, envelope)
        except ValidationError as exc:
            return _Refused(record, envelope, f"invalid {envelope.type}: {exc}")
        except EventVersionError as exc:
            return _Refused(record, envelope, str(exc))
        key = record.key
        read_key: Key | None = None if key is None else key.decode(errors="replace")
        if handler.key_field is not None:
            read_key = getattr(event, handler.key_field)
            key = str(read_key).encode()
            if is_command and record.key != key:
                return _Refused(record, envelope, _misplaced(record.key, key, handler))
        return _Work(record, envelope, handler, event, key, read_key, is_command)

    def _prefetch(self, works: list[_Work | _Refused | _Release], unit: UnitOfWork) -> None:
        """Read, in one query per view, the rows the handlers are known to read at their key."""
        wanted: dict[View[Any], list[Key]] = {}
        for work in works:
            if not isinstance(work, _Work):
                continue
            views = self._keyed_reads.get(work.handler)
            if views and work.read_key is not None:
                for view in views:
                    wanted.setdefault(view, []).append(work.read_key)
        for view, keys in wanted.items():
            unit.prefetch(view, keys)

    def _tell_committed(self, listener: Callable[[Batch], None], batch: Batch) -> None:
        # The batch is durable whatever the listener does; a failing listener must not stop
        # the partition, so its error is logged and the loop goes on.
        try:
            listener(batch)
        except Exception:
            logger.exception("on_commit listener failed", extra={"service": self.service.name})

    def _handle(self, work: _Work, unit: UnitOfWork, batch: Batch, emitter: Emitter) -> None:
        """Run the event's handler, with retries; what still fails goes to the DLQ."""
        latency, retries = self.meters.handler(work.envelope.type)
        for attempt in range(self.service.retry.attempts):
            tx = self._transaction(work, unit, emitter)
            started = time.perf_counter()
            try:
                with self._span(emitter, work):
                    self._call(work.handler, work.event, tx)
            except CommandRejected:
                pass  # tx.reject ended the handler; the rejection is recorded below
            except _BATCH_GONE:
                raise  # the batch's transaction is gone; the whole batch runs again
            except Exception as exc:
                latency.observe(time.perf_counter() - started)
                delay = self._retry_delay(exc, attempt, work, batch, retries)
                if delay is None:
                    return
                time.sleep(delay)
                continue
            latency.observe(time.perf_counter() - started)
            self._done(work, tx, unit, batch)
            return

    async def _handle_beside_others(
        self, work: _Work, unit: UnitOfWork, batch: Batch, emitter: Emitter
    ) -> None:
        """`_handle` for a coroutine handler run beside other partitions' handlers: one that
        read rows another handler changed while it ran is run again, on the rows as they
        are now, and its first run counts for nothing (no attempt, no outcome)."""
        latency, retries = self.meters.handler(work.envelope.type)
        attempt = 0
        while attempt < self.service.retry.attempts:
            tx = self._transaction(work, unit, emitter, beside_others=True)
            started = time.perf_counter()
            try:
                with self._span(emitter, work):
                    await work.handler.func(work.event, tx)
            except CommandRejected:
                pass
            except _BATCH_GONE:
                raise
            except Exception as exc:
                latency.observe(time.perf_counter() - started)
                if not unit.unchanged(tx):  # it may have failed on rows read stale
                    self.meters.rerun(work.envelope.type)
                    continue
                delay = self._retry_delay(exc, attempt, work, batch, retries)
                if delay is None:
                    return
                await asyncio.sleep(delay)
                attempt += 1
                continue
            latency.observe(time.perf_counter() - started)
            if not unit.unchanged(tx):
                self.meters.rerun(work.envelope.type)
                continue
            self._done(work, tx, unit, batch)
            return

    def _transaction(
        self, work: _Work, unit: UnitOfWork, emitter: Emitter, *, beside_others: bool = False
    ) -> Transaction:
        record = work.record
        return Transaction(
            unit=unit,
            emitter=emitter,
            cause=work.envelope,
            key=work.key,
            origin=f"{record.topic}/{record.partition}/{record.offset}",
            read_key=work.read_key,
            beside_others=beside_others,
        )

    def _retry_delay(
        self, error: Exception, attempt: int, work: _Work, batch: Batch, retries: Counter
    ) -> float | None:
        """The seconds to wait before attempt `attempt` + 1 after `error`, counted as a
        retry; None once the handler failed for good, and its record went to the DLQ."""
        retry = self.service.retry
        if retry.retries(error, attempt):
            retries.inc()
            return retry.delay(attempt)
        given_up = attempt + 1 < retry.attempts  # a permanent error: no retries
        times = "for good" if given_up else f"{attempt + 1} times"
        failure = f"handler failed {times}: {error!r}"
        self._fail(work.record, work.envelope, batch, f"{failure}\n{_users_traceback(error)}")
        return None

    def _done(self, work: _Work, tx: Transaction, unit: UnitOfWork, batch: Batch) -> None:
        """Take in what a handler that returned (or rejected its command) did."""
        self.meters.tally["done" if tx.rejection is None else "rejected"] += 1
        if tx.keyed_reads:
            self._keyed_reads.setdefault(work.handler, set()).update(tx.keyed_reads)
        if tx.rejection is None:
            unit.absorb(tx)
        if self.replay:
            return  # views only: the events went out, and the request was answered
        batch.outbox.extend(tx.messages)
        if self.log.packs_headers:  # packed once, for the outbox row and the log's record
            for message in tx.messages:
                message.packed_headers()
        if work.is_command:
            envelope = work.envelope
            batch.requests.append(
                RequestOutcome(
                    request_id=envelope.request_id,
                    source=envelope.source,
                    status=RequestStatus.DONE if tx.rejection is None else RequestStatus.REJECTED,
                    event_ids=tuple(tx.event_ids),
                    detail=tx.rejection,
                    events=tuple(tx.messages),
                )
            )

    def _span(self, emitter: Emitter, work: _Work) -> AbstractContextManager[None]:
        """The handler call's span (under the span that emitted its event), if traced."""
        if emitter.tracer is None:
            return tracing.NO_SPAN
        envelope, record = work.envelope, work.record
        attributes: dict[str, str | int] = {
            "messaging.message.id": envelope.id,
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "loglane.request_id": envelope.request_id,
        }
        return tracing.handling(
            emitter.tracer,
            self.service.name,
            envelope.type,
            envelope.traceparent,
            attributes,
            not_failures=(CommandRejected,),
        )

    def _call(self, handler: Handler, event: Event, tx: Transaction) -> None:
        if handler.is_async:
            self._run_async(handler.func(event, tx))
        else:
            handler.func(event, tx)

    def _run_async(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run `coroutine` to its end on the worker's event loop (kept from pass to pass)."""
        if self._async is None:
            self._async = asyncio.Runner()
        self._async.run(coroutine)

    def _fail(self, record: Record, envelope: Envelope | None, batch: Batch, error: str) -> None:
        """Dead-letter the record and, for a command with an envelope, mark its request
        failed."""
        error = error.replace("\x00", "\\x00")  # the store keeps it as text
        logger.warning(
            "passed over %s: %s" if self.replay else "dead-lettered %s: %s",
            record.topic_partition,
            error,
            extra={
                "service": self.service.name,
                "offset": record.offset,
                "request_id": None if envelope is None else envelope.request_id,
            },
        )
        self.meters.tally["failed"] += 1
        key = key_of(record)
        if key is not None and self.service.park_keys and record.topic == self.service.input_topic:
            # a replay parks the key too: later commands of it wait as they did live
            batch.park[key] = self._parking[record.topic_partition][key] = place(record)
        if self.replay:
            return  # it went to the DLQ when it was first handled
        batch.outbox.append(self._dead_letter(record, error))
        if envelope is not None and record.topic == self.service.input_topic:
            batch.requests.append(
                RequestOutcome(
                    request_id=envelope.request_id,
                    source=envelope.source,
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

    def _publish(self, committed: Sequence[Committed]) -> None:
        """Hand what the batches committed to the log without waiting for its
        acknowledgement: the worker goes on meanwhile, and waits (`_settle`) before it
        publishes again; the next commit sent forgets the published rows. A crash can only
        re-publish what the last three passes published."""
        self._settle()
        messages = [message for batch in committed for message in batch.messages]
        if not messages:
            return
        self._publishing = self.log.publish(messages)
        self._in_flight = {c.source: c.last_seq for c in committed if c.last_seq is not None}

    def _settle(self) -> None:
        """Wait until the log holds what was last published; its outbox rows are then
        `_published`, to be forgotten. If the log fails, they stay in the outbox, and are
        published again when their partitions resume."""
        if self._publishing is None:
            return
        publishing, self._publishing = self._publishing, None
        in_flight, self._in_flight = self._in_flight, {}
        publishing.wait()
        crash_point("after_publish")
        for source, seq in in_flight.items():
            self._published[source] = max(seq, self._published.get(source, seq))

    def _forget_published(self, partitions: Sequence[TopicPartition]) -> None:
        """Mark the published outbox rows of `partitions` so now, not with a later commit."""
        forget = {tp: self._published.pop(tp) for tp in partitions if tp in self._published}
        if forget:
            self.store.delete_outbox(self.service.name, forget)

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
        try:  # hand the partitions over with their outbox published and forgotten
            self._hand_on(self._confirm(rerun=False), offsets=False)
            self._settle()
            self._forget_published(partitions)
        except Exception as exc:  # the new owner publishes the rows again; consumers drop copies
            logger.warning(
                "could not confirm and publish the last pass before handing over: %s; the "
                "partitions kept resume from the store",
                exc,
                extra={"service": self.service.name},
            )
            # the last pass was refused, or only the store knows whether it committed and
            # what of it went out: the partitions kept start from the store again, after
            # the poll (`run_once`), and their records come again
            self._unsure = True
        for tp in partitions:
            self._owned.pop(tp, None)
            self._log_offsets.pop(tp, None)

    def _resume(self, partitions: Sequence[TopicPartition]) -> None:
        """Seek `partitions` to their stored positions and publish what their outbox holds."""
        consumer = self._require_consumer()
        self._settle()  # else what is in flight would be published again from the outbox
        self._forget_published(partitions)
        stored = self.store.positions(self.service.name)
        self._check_within_log(partitions, stored)
        for tp in partitions:
            position = stored.get(tp, 0)
            consumer.seek(tp, position)
            recent = self.store.applied(self.service.name, tp, position - self.dedupe_window)
            self._owned[tp] = _Owned(
                position=stored.get(tp),
                applied=AppliedWindow(self.dedupe_window, recent),
                origins=self.store.watermarks(self.service.name, tp),
                parked=self.store.parked(self.service.name, tp),
            )
        self._sought.update(partitions)
        crash_point("in_assign")
        self._flush_outbox(partitions)

    def _check_within_log(
        self, partitions: Sequence[TopicPartition], stored: dict[TopicPartition, int]
    ) -> None:
        """Refuse to go on when a stored position lies beyond its partition's end."""
        for topic in sorted({tp.topic for tp in partitions if tp in stored}):
            ends = self.log.offsets(topic)
            for tp in partitions:
                offsets = ends.get(tp.partition)
                if tp.topic == topic and tp in stored and offsets and stored[tp] > offsets.end:
                    raise PositionAheadOfLogError(
                        f"{self.service.name}: the stored position of {tp} is {stored[tp]}, "
                        f"beyond the log's end ({offsets.end}): the log was recreated or "
                        "truncated under these views, and new records would be skipped. Stop "
                        f"the workers and run `loglane reset APP --service {self.service.name}` "
                        "to read the log from its start"
                    )

    def _flush_outbox(self, partitions: Sequence[TopicPartition]) -> None:
        """Publish outbox rows a crash left behind (same ids as before), then mark them so."""
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


@dataclass(slots=True)
class _Work:
    """A record to handle: its envelope, handler and event; the key its output gets, and the
    key its handler's view reads are expected at."""

    record: Record
    envelope: Envelope
    handler: Handler
    event: Event
    key: bytes | None
    read_key: Key | None
    is_command: bool


@dataclass(slots=True)
class _Owned:
    """What the worker keeps of a partition it owns, as of its last commit: the stored
    position (None before the first), the ids applied lately (to drop duplicates), how far
    each source's events were applied (`loglane.dedupe`), and the keys parked behind a dead
    letter (key -> its head's place)."""

    position: int | None
    applied: AppliedWindow
    origins: Watermarks
    parked: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Read:
    """A record read as it was polled: its envelope, or why it has none, and its work."""

    record: Record
    envelope: Envelope | EnvelopeError
    work: _Work | _Refused | None


@dataclass(slots=True)
class _Sent:
    """A transaction's commit sent ahead, and what the worker takes in once it is
    confirmed; `polled` runs again if it fails."""

    polled: dict[TopicPartition, list[Record]]
    parts: dict[TopicPartition, list[Record]]
    batches: dict[TopicPartition, Batch]
    origins: dict[TopicPartition, Watermarks]
    parking: dict[TopicPartition, dict[str, str]]
    published: dict[TopicPartition, int]
    tally: collections.Counter[str]
    spent: float  # seconds the worker spent sending and (then) waiting for the commit
    commit: PendingCommit


@dataclass(slots=True)
class _Release:
    """A control record: release `key` if it is still parked behind `head` (it was dropped)."""

    record: Record
    key: str
    head: str


@dataclass(frozen=True, slots=True)
class _Refused:
    """A record that goes to the DLQ for `reason` (without an envelope: not a CloudEvent)."""

    record: Record
    envelope: Envelope | None
    reason: str


@dataclass(frozen=True, slots=True)
class Committed:
    """A batch the store committed: the outbox rows to publish, up to `last_seq`."""

    source: TopicPartition
    last_seq: int | None
    messages: list[Message]


def _event_of(event_type: type[Event], envelope: Envelope) -> Event:
    """The handler's model of the event: its data validated, upcast first if it is of an
    older version (`loglane.events`); `EventVersionError` for one newer than this code."""
    version = envelope.version if envelope.dataschema is not None else 1
    if version is None or version == event_type.event_version:  # not Loglane's: as it is
        return event_type.model_validate_json(envelope.data)
    if version > event_type.event_version:
        raise EventVersionError(
            f"{envelope.type} data of version {version} is newer than this code knows "
            f"(version {event_type.event_version}): deploy the code that handles it, then "
            "re-drive this event"
        )
    try:
        data = json.loads(envelope.data)
    except ValueError as exc:
        raise EventVersionError(f"{envelope.type} data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventVersionError(f"{envelope.type} data of version {version} is no object")
    return event_type.model_validate(event_type.upcast(data, version))


async def _all_of(steps: list[Coroutine[Any, Any, None]]) -> None:
    """Run `steps` side by side until all end; the first to raise cancels the others, and its
    error is raised as it is (a `BatchConflictError` must reach `_commit` as one)."""
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(step)
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


def _users_traceback(exc: BaseException) -> str:
    """The traceback of a handler's exception from the handler down, without Loglane's own
    frames above it: what the DLQ entry and the request's detail show."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = Path(__file__).resolve().parent
    users = [frame for frame in frames if not Path(frame.filename).resolve().is_relative_to(ours)]
    lines = traceback.format_list(users or frames)
    return (
        "Traceback (most recent call last):\n"
        + "".join(lines)
        + "".join(traceback.format_exception_only(exc))
    )


def _misplaced(record_key: bytes | None, key: bytes, handler: Handler) -> str:
    return (
        f"record key {record_key!r} is not the command's {handler.key_field} ({key!r}); "
        "commands of one key must share a partition to keep their order: post them with "
        f"the message key set to their {handler.key_field}"
    )


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
