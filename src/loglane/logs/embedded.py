"""The embedded log: topics, partitions, offsets and consumer groups in one SQLite file.

Durable (WAL, `synchronous=FULL` by default) and safe for many processes at once: every write
is one `BEGIN IMMEDIATE` transaction, so concurrent appenders get dense, unique offsets.
Consumer groups work as Kafka's do in shape: members heartbeat into the file, partitions are
spread round-robin over the live members, and each owned partition is a lease that a dead
member loses after `session_timeout` seconds. A partition counts as owned once the listener's
`on_assigned` returns; if it raises, `poll` raises too and offers the partition again on the
next call, while the member keeps the lease.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from loglane._sqlite import SQLiteFile
from loglane.errors import ConfigurationError
from loglane.logs.base import Consumer, Log, PartitionOffsets, RebalanceListener
from loglane.partitioner import partition_for
from loglane.records import (
    Message,
    Position,
    Record,
    TopicPartition,
    decode_headers,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER
);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL DEFAULT 0,
    end_offset INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS committed (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (grp, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    grp TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (grp, topic_id, partition)
) WITHOUT ROWID;
"""

_RETENTION_CHECK_SECONDS = 60.0
_IDLE_CHECK_SECONDS = 0.005


# Hashed by identity (in C): an append hashes its topics a few times per message. Should two
# objects of one topic meet in an append, each reserves its own offsets, which is still right.
@dataclass(frozen=True, slots=True, eq=False)
class _Topic:
    id: int
    name: str
    partitions: int


_APPEND_SIGNALS: dict[Path, threading.Condition] = {}
_APPEND_SIGNALS_LOCK = threading.Lock()


def _append_signal(path: Path) -> threading.Condition:
    """One condition per log file and process, shared by every `EmbeddedLog` opened on it:
    `loglane run` opens one per worker thread and one for the HTTP API, and a consumer must
    wake at once when any of them appends, not on its next poll of the file."""
    with _APPEND_SIGNALS_LOCK:
        return _APPEND_SIGNALS.setdefault(path.resolve(), threading.Condition())


class EmbeddedLog(Log):
    """A log in the SQLite file at `path`, shared by every process that opens it."""

    packs_headers = True  # a record's headers are one MessagePack column

    def __init__(
        self,
        path: Path | str,
        *,
        session_timeout: float = 6.0,
        heartbeat_interval: float = 1.0,
        synchronous: str = "FULL",
    ) -> None:
        self.path = Path(path)
        self.session_timeout = session_timeout
        self.heartbeat_interval = heartbeat_interval
        self._file = SQLiteFile(self.path, synchronous=synchronous)
        self._topics: dict[str, _Topic] = {}
        self._appended = _append_signal(self.path)
        self._round_robin = itertools.count()
        self._file.execute_script(_SCHEMA)

    def connection(self) -> sqlite3.Connection:
        return self._file.connection()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._file.transaction()

    def close(self) -> None:
        self._file.close()

    # -- topics ---------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int, *, retention_ms: int | None = None) -> int:
        """Create `name` unless it exists; an existing topic keeps its partitions, and keeps
        its retention unless `retention_ms` gives a new one."""
        if partitions < 1:
            raise ConfigurationError(f"topic {name!r}: partitions must be at least 1")
        with self.transaction() as db:
            db.execute(
                "INSERT INTO topics (name, partitions, retention_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET "
                "retention_ms = coalesce(excluded.retention_ms, retention_ms)",
                (name, partitions, retention_ms),
            )
            topic_id, actual = db.execute(
                "SELECT id, partitions FROM topics WHERE name = ?", (name,)
            ).fetchone()
            db.executemany(
                "INSERT OR IGNORE INTO partitions (topic_id, partition) VALUES (?, ?)",
                [(topic_id, p) for p in range(actual)],
            )
        self._topics[name] = _Topic(topic_id, name, actual)
        return int(actual)

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            row = (
                self.connection()
                .execute("SELECT id, partitions FROM topics WHERE name = ?", (name,))
                .fetchone()
            )
            if row is None:
                raise ConfigurationError(
                    f"topic {name!r} does not exist in {self.path}; start the service's "
                    "workers once (they create their topics) or create it first"
                )
            topic = self._topics[name] = _Topic(row[0], name, row[1])
        return topic

    def partition_count(self, topic: str) -> int:
        return self._topic(topic).partitions

    # -- append and read ------------------------------------------------------------------------

    def append(self, messages: Sequence[Message]) -> list[Position]:
        if not messages:
            return []
        now_ms = int(time.time() * 1000)
        placed = [self._place(message) for message in messages]
        headers = [message.packed_headers() for message in messages]  # before the lock
        counts: dict[tuple[_Topic, int], int] = defaultdict(int)
        for topic, partition in placed:
            counts[topic, partition] += 1
        with self.transaction() as db:
            next_offset: dict[tuple[_Topic, int], int] = {}
            for (topic, partition), count in counts.items():
                (end,) = db.execute(
                    "UPDATE partitions SET end_offset = end_offset + ? "
                    "WHERE topic_id = ? AND partition = ? RETURNING end_offset",
                    (count, topic.id, partition),
                ).fetchone()
                next_offset[topic, partition] = end - count
            rows = []
            positions = []
            for message, slot, packed in zip(messages, placed, headers, strict=True):
                offset = next_offset[slot]
                next_offset[slot] = offset + 1
                topic, partition = slot
                rows.append(
                    (topic.id, partition, offset, message.key, message.value, packed, now_ms)
                )
                positions.append(Position(topic.name, partition, offset))
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        with self._appended:
            self._appended.notify_all()
        return positions

    def _place(self, message: Message) -> tuple[_Topic, int]:
        topic = self._topic(message.topic)
        if message.key is None:
            return topic, next(self._round_robin) % topic.partitions
        return topic, partition_for(message.key, topic.partitions)

    def read(self, partition: TopicPartition, offset: int, max_records: int) -> list[Record]:
        topic = self._topic(partition.topic)
        rows = self.connection().execute(
            "SELECT offset, key, value, headers, timestamp_ms FROM records "
            "WHERE topic_id = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
            (topic.id, partition.partition, offset, max_records),
        )
        return [
            Record(topic.name, partition.partition, off, key, value, decode_headers(hdr), ts)
            for off, key, value, hdr, ts in rows
        ]

    def offsets(self, topic: str) -> dict[int, PartitionOffsets]:
        meta = self._topic(topic)
        rows = self.connection().execute(
            "SELECT partition, start_offset, end_offset FROM partitions WHERE topic_id = ?",
            (meta.id,),
        )
        return {partition: PartitionOffsets(start, end) for partition, start, end in rows}

    def committed(self, group: str, topic: str) -> dict[int, int]:
        meta = self._topic(topic)
        rows = self.connection().execute(
            "SELECT partition, offset FROM committed WHERE grp = ? AND topic_id = ?",
            (group, meta.id),
        )
        return dict(rows.fetchall())

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Delete records older than their topic's retention; return how many went."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        deleted = 0
        with self.transaction() as db:
            topics = db.execute(
                "SELECT id, retention_ms FROM topics WHERE retention_ms IS NOT NULL"
            ).fetchall()
            for topic_id, retention_ms in topics:
                deleted += db.execute(
                    "DELETE FROM records WHERE topic_id = ? AND timestamp_ms < ?",
                    (topic_id, now_ms - retention_ms),
                ).rowcount
                db.execute(
                    "UPDATE partitions SET start_offset = coalesce((SELECT min(offset) "
                    "FROM records r WHERE r.topic_id = partitions.topic_id "
                    "AND r.partition = partitions.partition), end_offset) WHERE topic_id = ?",
                    (topic_id,),
                )
        return deleted

    def wait_for_append(self, timeout: float) -> None:
        """Block until this process appends, or `timeout` passes (other processes: poll)."""
        with self._appended:
            self._appended.wait(timeout)

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        spread: bool = False,
    ) -> EmbeddedConsumer:
        subscribed = [self._topic(name) for name in topics]
        return EmbeddedConsumer(self, group, subscribed, listener, spread=spread)


class EmbeddedConsumer(Consumer):
    """A consumer group member whose partition ownership is a lease row in the log file."""

    def __init__(
        self,
        log: EmbeddedLog,
        group: str,
        topics: list[_Topic],
        listener: RebalanceListener,
        *,
        spread: bool = False,
    ) -> None:
        self._log = log
        self._group = group
        self._topics = {topic.id: topic for topic in topics}
        self._listener = listener
        self._spread = spread
        self.member_id = str(uuid.uuid4())
        self._owned: set[TopicPartition] = set()
        # leased, but the listener has not taken them yet (or raised): where each will start
        self._unannounced: dict[TopicPartition, int] = {}
        self._fetch: dict[TopicPartition, int] = {}
        # offsets committed without waiting: written with the next heartbeat (`commit`)
        self._uncommitted: dict[TopicPartition, int] = {}
        self._next_heartbeat = 0.0
        self._next_retention = time.monotonic() + _RETENTION_CHECK_SECONDS
        self._start = 0
        self._closed = False

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._owned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition in self._owned or partition in self._unannounced:
            self._fetch[partition] = offset

    def poll(self, timeout: float, max_records: int) -> list[Record]:
        deadline = time.monotonic() + timeout
        db = self._log.connection()
        while True:
            if time.monotonic() >= self._next_heartbeat:
                self._heartbeat()
            self._announce()
            version = db.execute("PRAGMA data_version").fetchone()[0]
            records = self._fetch_records(max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            self._wait_for_news(version, min(remaining, self._next_heartbeat - time.monotonic()))

    def _wait_for_news(self, version: int, timeout: float) -> None:
        """Sleep until someone appends: at once for this process, within 5 ms for others."""
        db = self._log.connection()
        deadline = time.monotonic() + max(timeout, 0.0)
        while time.monotonic() < deadline:
            self._log.wait_for_append(min(_IDLE_CHECK_SECONDS, deadline - time.monotonic()))
            if db.execute("PRAGMA data_version").fetchone()[0] != version:
                return

    def _fetch_records(self, max_records: int) -> list[Record]:
        """Up to `max_records` records from the owned partitions that have any, the first
        one's first; for a spread consumer, each one's share first, and what one leaves of
        it goes to those after it. The partition that comes first rotates."""
        owned = sorted(self._owned)
        if not owned:
            return []
        ends = self._end_offsets()
        self._start = (self._start + 1) % len(owned)
        rotated = owned[self._start :] + owned[: self._start]
        waiting = [tp for tp in rotated if self._fetch[tp] < ends.get(tp, 0)]
        records: list[Record] = []
        for index, partition in enumerate(waiting):
            room = max_records - len(records)
            share = room // (len(waiting) - index) if self._spread else room
            batch = self._log.read(partition, self._fetch[partition], share) if share else []
            if batch:
                records.extend(batch)
                self._fetch[partition] = batch[-1].offset + 1
        return records

    def _end_offsets(self) -> dict[TopicPartition, int]:
        rows = self._log.connection().execute(
            "SELECT topic_id, partition, end_offset FROM partitions WHERE topic_id IN "
            f"({','.join('?' * len(self._topics))})",
            tuple(self._topics),
        )
        return {
            TopicPartition(self._topics[topic_id].name, partition): end
            for topic_id, partition, end in rows
        }

    def commit(self, offsets: Mapping[TopicPartition, int], *, wait: bool = True) -> None:
        """Without `wait`, the offsets go into the log with the member's next heartbeat (or
        an earlier commit that waits, or as it lets the partitions go), rather than in a
        write of their own: on a log with `synchronous=FULL` that is an fsync saved per
        pass, for a figure that only tells the lag."""
        self._uncommitted.update(
            {tp: offset for tp, offset in offsets.items() if tp in self._owned}
        )
        if wait:
            with self._log.transaction() as db:
                self._write_offsets(db, self._uncommitted)
            self._uncommitted = {}

    def _write_offsets(self, db: sqlite3.Connection, offsets: Mapping[TopicPartition, int]) -> None:
        """Record `offsets`, of the partitions this member still holds the lease of."""
        db.executemany(
            "INSERT INTO committed (grp, topic_id, partition, offset) "
            "SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM leases WHERE grp = ?1 "
            "AND topic_id = ?2 AND partition = ?3 AND owner = ?5) "
            "ON CONFLICT (grp, topic_id, partition) DO UPDATE SET offset = excluded.offset",
            [
                (self._group, self._topic_id(tp), tp.partition, offset, self.member_id)
                for tp, offset in offsets.items()
            ],
        )

    def _topic_id(self, partition: TopicPartition) -> int:
        return self._log._topic(partition.topic).id

    # -- the group protocol ---------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Renew membership, claim the partitions due to this member, give up the others.

        Every lease this member holds ends up owned, unannounced (waiting for `on_assigned`)
        or released, even when the listener raises: a lease that is held but not read would
        stall its partition for good.
        """
        now = time.time()
        expires = now + self._log.session_timeout
        with self._log.transaction() as db:
            self._write_offsets(db, self._uncommitted)  # while the leases are still ours
            self._uncommitted = {}
            db.execute("DELETE FROM members WHERE grp = ? AND expires_at < ?", (self._group, now))
            db.execute(
                "INSERT INTO members VALUES (?, ?, ?) ON CONFLICT (grp, member) "
                "DO UPDATE SET expires_at = excluded.expires_at",
                (self._group, self.member_id, expires),
            )
            members = [
                row[0]
                for row in db.execute(
                    "SELECT member FROM members WHERE grp = ? ORDER BY member", (self._group,)
                )
            ]
            leases = {
                (topic_id, partition): (owner, epoch, lease_expiry)
                for topic_id, partition, owner, epoch, lease_expiry in db.execute(
                    "SELECT topic_id, partition, owner, epoch, expires_at FROM leases "
                    "WHERE grp = ?",
                    (self._group,),
                )
            }
            everything = sorted(
                (topic.id, partition)
                for topic in self._topics.values()
                for partition in range(topic.partitions)
            )
            me = members.index(self.member_id)
            due = {slot for i, slot in enumerate(everything) if i % len(members) == me}
            claimed: list[tuple[TopicPartition, tuple[int, int]]] = []
            lost: list[TopicPartition] = []
            surplus: list[TopicPartition] = []
            for slot in everything:
                tp = TopicPartition(self._topics[slot[0]].name, slot[1])
                owner, epoch, lease_expiry = leases.get(slot, (None, 0, 0.0))
                mine_now = owner == self.member_id and lease_expiry >= now
                known = tp in self._owned or tp in self._unannounced
                if known and not mine_now:
                    lost.append(tp)
                if slot in due and (owner is None or lease_expiry < now or mine_now):
                    db.execute(
                        "INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (grp, topic_id, partition) DO UPDATE SET "
                        "owner = excluded.owner, epoch = excluded.epoch, "
                        "expires_at = excluded.expires_at",
                        (self._group, *slot, self.member_id, epoch + (not mine_now), expires),
                    )
                    if not (mine_now and known):
                        claimed.append((tp, slot))
                elif mine_now:
                    # renewed so that it stays ours while the listener lets go of it
                    surplus.append(tp)
                    db.execute(
                        "UPDATE leases SET expires_at = ? WHERE grp = ? AND topic_id = ? "
                        "AND partition = ?",
                        (expires, self._group, *slot),
                    )
            committed = {
                (topic_id, partition): offset
                for topic_id, partition, offset in db.execute(
                    "SELECT topic_id, partition, offset FROM committed WHERE grp = ?",
                    (self._group,),
                )
            }
        self._next_heartbeat = time.monotonic() + self._log.heartbeat_interval
        if time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + _RETENTION_CHECK_SECONDS
            self._log.enforce_retention()
        try:
            self._revoke(lost)
            if surplus:
                self._release(surplus)
        finally:
            # offered to the listener by `_announce`; a partition both lost and claimed again
            # (its lease lapsed meanwhile) is announced afresh
            for tp, slot in claimed:
                self._unannounced[tp] = committed.get(slot, 0)

    def _slot(self, tp: TopicPartition) -> tuple[int, int]:
        return (self._topic_id(tp), tp.partition)

    def _announce(self) -> None:
        """Offer the listener the partitions claimed but not yet taken; they count as owned
        once it returns. If it raises, they stay unannounced and the next poll offers them
        again: the member keeps their leases meanwhile, but reads nothing from them."""
        if not self._unannounced:
            return
        pending = sorted(self._unannounced)
        for tp in pending:
            self._fetch[tp] = self._unannounced[tp]
        self._listener.on_assigned(pending)
        self._unannounced.clear()
        self._owned.update(pending)

    def _revoke(self, partitions: list[TopicPartition]) -> None:
        """Forget `partitions`, telling the listener of those it had taken; they are
        forgotten even if it raises, since the member no longer holds them."""
        announced = [tp for tp in partitions if tp in self._owned]
        try:
            if announced:
                self._listener.on_revoked(announced)
        finally:
            for tp in partitions:
                self._owned.discard(tp)
                self._unannounced.pop(tp, None)
                self._fetch.pop(tp, None)
                self._uncommitted.pop(tp, None)  # if it comes back, its offsets moved on

    def _release(self, partitions: list[TopicPartition]) -> None:
        """Hand `partitions` over: tell the listener first, then drop the leases (either way:
        another member takes them over from the store's positions)."""
        offsets = {tp: self._uncommitted[tp] for tp in partitions if tp in self._uncommitted}
        try:
            self._revoke(partitions)
        finally:
            with self._log.transaction() as db:
                self._write_offsets(db, offsets)  # before the leases go
                db.executemany(
                    "DELETE FROM leases WHERE grp = ? AND topic_id = ? AND partition = ? "
                    "AND owner = ?",
                    [(self._group, *self._slot(tp), self.member_id) for tp in partitions],
                )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._release(sorted(self._owned | self._unannounced.keys()))
        finally:
            with self._log.transaction() as db:
                db.execute(
                    "DELETE FROM members WHERE grp = ? AND member = ?",
                    (self._group, self.member_id),
                )
