"""The embedded log passes the log contract, and holds up under concurrent processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from loglane.errors import BackendUnavailableError
from loglane.logs.base import Log
from loglane.logs.embedded import EmbeddedLog
from loglane.records import Message, Record, TopicPartition
from tests.conftest import eventually
from tests.contracts.log_contract import (
    FailsFirstRevocation,
    LogContract,
    Owner,
    poll_until,
    unique,
)


class TestEmbeddedLog(LogContract):
    @pytest.fixture
    def log(self, tmp_path: Path) -> Iterator[Log]:
        log = EmbeddedLog(tmp_path / "log.db", session_timeout=1.0, heartbeat_interval=0.1)
        yield log
        log.close()


def _append_many(path: str, topic: str, writer: int, count: int) -> None:
    log = EmbeddedLog(path)
    for i in range(count):
        log.append([Message(topic, f"w{writer}-{i % 7}".encode(), f"{writer}:{i}".encode())])
    log.close()


def test_concurrent_writer_processes_get_unique_dense_offsets(tmp_path: Path) -> None:
    path = str(tmp_path / "log.db")
    log = EmbeddedLog(path)
    log.create_topic("shared", 3)
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_append_many, args=(path, "shared", w, 300)) for w in range(4)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    values: list[bytes] = []
    for partition, offsets in log.offsets("shared").items():
        records = log.read(TopicPartition("shared", partition), 0, 10_000)
        assert [r.offset for r in records] == list(range(offsets.end))
        values += [r.value for r in records]
    assert sorted(values) == sorted(f"{w}:{i}".encode() for w in range(4) for i in range(300))
    # per writer and key, the log keeps the order the writer appended in
    for partition in range(3):
        records = log.read(TopicPartition("shared", partition), 0, 10_000)
        for writer in range(4):
            mine = [
                int(r.value.split(b":")[1]) for r in records if r.value.startswith(b"%d:" % writer)
            ]
            assert mine == sorted(mine)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    log.close()


def test_a_dead_members_partitions_move_to_a_live_one_after_the_session_timeout(
    tmp_path: Path,
) -> None:
    log = EmbeddedLog(tmp_path / "log.db", session_timeout=0.5, heartbeat_interval=0.05)
    log.create_topic("t", 4)
    group = unique("group")
    a, b = Owner(), Owner()
    dead = log.consumer(group, ["t"], a)
    live = log.consumer(group, ["t"], b)
    poll_until([dead, live], lambda: len(a.owned) == 2 and len(b.owned) == 2)
    # `dead` never polls again, like a killed process: its leases simply expire
    poll_until([live], lambda: len(b.owned) == 4)
    assert live.assignment() == {TopicPartition("t", p) for p in range(4)}
    live.close()
    log.close()


def test_a_member_that_lost_its_lease_cannot_commit_offsets(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db", session_timeout=0.5, heartbeat_interval=0.05)
    log.create_topic("t", 2)
    group = unique("group")
    a, b = Owner(), Owner()
    zombie = log.consumer(group, ["t"], a)
    poll_until([zombie], lambda: len(a.owned) == 2)
    heir = log.consumer(group, ["t"], b)
    poll_until([heir], lambda: len(b.owned) == 2)
    heir.commit({TopicPartition("t", 0): 5})
    zombie.commit({TopicPartition("t", 0): 1})
    assert log.committed(group, "t") == {0: 5}
    heir.close()
    log.close()


def test_offsets_committed_without_waiting_go_with_the_next_heartbeat_not_a_write_of_their_own(
    tmp_path: Path,
) -> None:
    log = EmbeddedLog(tmp_path / "log.db", heartbeat_interval=0.05)
    log.create_topic("t", 2)
    group = unique("group")
    owner = Owner()
    consumer = log.consumer(group, ["t"], owner)
    try:
        poll_until([consumer], lambda: len(owner.owned) == 2)
        consumer.commit({TopicPartition("t", 0): 3}, wait=False)
        assert log.committed(group, "t") == {}, "no fsync of its own: it waits for a heartbeat"
        poll_until([consumer], lambda: log.committed(group, "t") == {0: 3})
        consumer.commit({TopicPartition("t", 1): 4}, wait=False)
    finally:
        consumer.close()
    assert log.committed(group, "t") == {0: 3, 1: 4}, "letting go of a partition writes them"
    log.close()


def test_offsets_a_member_deferred_are_not_written_once_its_lease_went_to_another(
    tmp_path: Path,
) -> None:
    log = EmbeddedLog(tmp_path / "log.db", session_timeout=0.5, heartbeat_interval=0.05)
    log.create_topic("t", 1)
    group = unique("group")
    a, b = Owner(), Owner()
    zombie = log.consumer(group, ["t"], a)
    poll_until([zombie], lambda: len(a.owned) == 1)
    zombie.commit({TopicPartition("t", 0): 1}, wait=False)
    heir = log.consumer(group, ["t"], b)
    poll_until([heir], lambda: len(b.owned) == 1)  # once the zombie's lease lapsed
    heir.commit({TopicPartition("t", 0): 5})
    poll_until([zombie], lambda: not a.owned)  # it finds its lease gone
    assert log.committed(group, "t") == {0: 5}
    heir.close()
    zombie.close()
    log.close()


def test_retention_deletes_old_records_and_moves_the_start_offset(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic("t", 1, retention_ms=1000)
    log.append([Message("t", b"k", b"old")] * 3)
    (now_ms,) = [r.timestamp_ms for r in log.read(TopicPartition("t", 0), 2, 1)]
    assert log.enforce_retention(now_ms=now_ms + 5000) == 3
    log.append([Message("t", b"k", b"new")])
    assert log.offsets("t")[0].start == 3
    assert [r.value for r in log.read(TopicPartition("t", 0), 0, 10)] == [b"new"]
    log.close()


class RefusesToTakeOver(Owner):
    """Takes its first partitions, then fails once to take more: its store went down."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[TopicPartition] = []

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        if self.owned and not self.refused:
            self.refused.extend(partitions)
            raise BackendUnavailableError("the store is down")
        super().on_assigned(partitions)


def test_a_survivor_that_fails_to_take_a_dead_members_partitions_is_offered_them_again(
    tmp_path: Path,
) -> None:
    log = EmbeddedLog(tmp_path / "log.db", session_timeout=0.5, heartbeat_interval=0.05)
    log.create_topic("t", 4)
    log.append([Message("t", f"k{i}".encode(), b"v") for i in range(40)])
    group = unique("group")
    survivor = RefusesToTakeOver()
    dead = log.consumer(group, ["t"], Owner())
    live = log.consumer(group, ["t"], survivor)
    poll_until([dead, live], lambda: len(live.assignment()) == 2 == len(dead.assignment()))
    own = live.assignment()
    # `dead` never polls again, like a killed process; the survivor's store fails as it takes over
    with pytest.raises(BackendUnavailableError, match="the store is down"):
        poll_until([live], lambda: False)
    assert set(survivor.refused) == {TopicPartition("t", p) for p in range(4)} - own
    assert live.assignment() == own
    ends = log.offsets("t")
    expected = sum(ends[tp.partition].end for tp in survivor.refused)
    records: list[Record] = []
    poll_until([live], lambda: len(records) >= expected, into=records)
    assert survivor.owned == live.assignment() == {TopicPartition("t", p) for p in range(4)}
    for tp in survivor.refused:
        offsets = [r.offset for r in records if r.topic_partition == tp]
        assert offsets == list(range(ends[tp.partition].end))
    live.close()
    log.close()


def test_a_member_whose_lease_lapsed_lets_go_even_if_its_listener_fails_and_takes_them_again(
    tmp_path: Path,
) -> None:
    log = EmbeddedLog(tmp_path / "log.db", session_timeout=0.5, heartbeat_interval=0.05)
    log.create_topic("t", 2)
    owner = FailsFirstRevocation()
    consumer = log.consumer(unique("group"), ["t"], owner)
    poll_until([consumer], lambda: len(owner.owned) == 2)
    # the member stalls (a long GC pause, a stopped process) until its leases lapse
    db = log.connection()
    eventually(
        lambda: db.execute("SELECT max(expires_at) FROM leases").fetchone()[0] < time.time(),
        message="the leases lapsed",
    )
    with pytest.raises(BackendUnavailableError, match="the store is down"):
        consumer.poll(0.0, 10)
    assert sorted(owner.failed) == [TopicPartition("t", 0), TopicPartition("t", 1)]
    assert consumer.assignment() == frozenset()
    log.append([Message("t", b"k", b"after")])
    got: list[Record] = []
    poll_until([consumer], lambda: len(consumer.assignment()) == 2 and bool(got), into=got)
    assert sorted(owner.assigned) == sorted(2 * owner.failed)
    assert [r.value for r in got] == [b"after"]
    consumer.close()
    log.close()


def test_reopening_a_topic_without_a_retention_keeps_the_one_it_was_given(
    tmp_path: Path,
) -> None:
    first = EmbeddedLog(tmp_path / "log.db")
    first.create_topic("t", 1, retention_ms=1000)
    first.close()
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic("t", 1)  # as every start of the service's workers does
    log.append([Message("t", b"k", b"old")] * 3)
    (now_ms,) = [r.timestamp_ms for r in log.read(TopicPartition("t", 0), 2, 1)]
    assert log.enforce_retention(now_ms=now_ms + 5000) == 3
    log.close()


def test_an_explicit_retention_replaces_the_topics_old_one(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic("t", 1, retention_ms=1000)
    log.create_topic("t", 1, retention_ms=60_000)
    log.append([Message("t", b"k", b"old")] * 3)
    (now_ms,) = [r.timestamp_ms for r in log.read(TopicPartition("t", 0), 2, 1)]
    assert log.enforce_retention(now_ms=now_ms + 5000) == 0
    assert log.enforce_retention(now_ms=now_ms + 120_000) == 3
    log.close()


def test_a_spread_consumer_shares_a_backlog_out_among_the_partitions(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic("t", 3)
    spreading, filling = Owner(), Owner()
    spread = log.consumer("spread", ["t"], spreading, spread=True)
    filled = log.consumer("filled", ["t"], filling)
    try:
        poll_until([spread, filled], lambda: len(spreading.owned) == len(filling.owned) == 3)
        log.append([Message("t", f"k{i}".encode(), b"v") for i in range(90)])
        taken = spread.poll(1.0, 9)
        assert sorted(sum(r.partition == p for r in taken) for p in range(3)) == [3, 3, 3]
        taken = filled.poll(1.0, 9)
        assert len(taken) == 9
        assert len({r.partition for r in taken}) == 1  # filled from one partition's backlog
    finally:
        spread.close()
        filled.close()
        log.close()
