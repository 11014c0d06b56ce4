"""The behaviour every log backend must show; backends subclass `LogContract`.

A subclass provides the `log` fixture (a fresh, open log). Topic and group names are unique
per test so a shared broker can run the suite.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from loglane.errors import BackendUnavailableError, ConfigurationError
from loglane.logs.base import Consumer, Log
from loglane.partitioner import partition_for
from loglane.records import Message, Record, TopicPartition
from tests.conftest import eventually


class Owner:
    """A rebalance listener that remembers what its member owns."""

    def __init__(self) -> None:
        self.owned: set[TopicPartition] = set()
        self.assigned: list[TopicPartition] = []
        self.revoked: list[TopicPartition] = []

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        self.assigned.extend(partitions)
        self.owned.update(partitions)

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self.revoked.extend(partitions)
        self.owned.difference_update(partitions)


class RefusesFirstAssignment(Owner):
    """Fails to take its first assignment, as a worker does whose store is briefly down."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[TopicPartition] = []

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        if not self.refused:
            self.refused.extend(partitions)
            raise BackendUnavailableError("the store is down")
        super().on_assigned(partitions)


class FailsFirstRevocation(Owner):
    """Fails to let go of its first revoked partitions, as a worker does whose store is down."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[TopicPartition] = []

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        if not self.failed:
            self.failed.extend(partitions)
            raise BackendUnavailableError("the store is down")
        super().on_revoked(partitions)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def poll_until(
    consumers: Sequence[Consumer],
    done: object,
    *,
    timeout: float = 60.0,
    into: list[Record] | None = None,
) -> list[Record]:
    """Poll every consumer in turn until `done()` holds; return all records polled.

    Records are appended to `into` as they come, so `done` may look at them: a backend may
    deliver an assignment and the first records in different polls.
    """
    records: list[Record] = [] if into is None else into
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"consumers did not reach the expected state in {timeout}s")
        for consumer in consumers:
            records.extend(consumer.poll(0.05, 500))
    return records


class LogContract:
    @pytest.fixture
    def log(self) -> Iterator[Log]:
        raise NotImplementedError("a backend's test class provides the log fixture")

    @pytest.fixture
    def topic(self, log: Log) -> str:
        name = unique("topic")
        log.create_topic(name, 3)
        return name

    def test_appended_records_get_dense_offsets_in_each_partition(
        self, log: Log, topic: str
    ) -> None:
        positions = log.append([Message(topic, b"k", f"v{i}".encode()) for i in range(5)])
        partition = partition_for(b"k", 3)
        assert [(p.partition, p.offset) for p in positions] == [(partition, i) for i in range(5)]
        records = log.read(TopicPartition(topic, partition), 0, 10)
        assert [r.value for r in records] == [f"v{i}".encode() for i in range(5)]
        assert [r.offset for r in records] == list(range(5))

    def test_a_key_lands_on_its_murmur2_partition(self, log: Log, topic: str) -> None:
        keys = [f"customer-{i}".encode() for i in range(30)]
        positions = log.append([Message(topic, key, b"x") for key in keys])
        assert [p.partition for p in positions] == [partition_for(k, 3) for k in keys]

    def test_key_value_and_headers_survive_the_round_trip(self, log: Log, topic: str) -> None:
        headers = (("ce_id", b"abc"), ("binary", bytes(range(256))), ("ce_id", b"again"))
        (position,) = log.append([Message(topic, b"\x00\xffkey", b"\x00value", headers)])
        (record,) = log.read(TopicPartition(topic, position.partition), position.offset, 1)
        assert record.key == b"\x00\xffkey"
        assert record.value == b"\x00value"
        assert record.headers == headers
        assert record.topic == topic
        assert record.timestamp_ms > 0

    def test_records_without_a_key_are_accepted(self, log: Log, topic: str) -> None:
        positions = log.append([Message(topic, None, b"a"), Message(topic, None, b"b")])
        for position in positions:
            (record,) = log.read(TopicPartition(topic, position.partition), position.offset, 1)
            assert record.key is None

    def test_reading_from_an_offset_returns_that_record_and_later_ones(
        self, log: Log, topic: str
    ) -> None:
        log.append([Message(topic, b"k", str(i).encode()) for i in range(10)])
        tp = TopicPartition(topic, partition_for(b"k", 3))
        assert [r.value for r in log.read(tp, 7, 100)] == [b"7", b"8", b"9"]
        assert [r.value for r in log.read(tp, 2, 2)] == [b"2", b"3"]
        assert log.read(tp, 10, 100) == []

    def test_offsets_report_where_each_partition_starts_and_ends(
        self, log: Log, topic: str
    ) -> None:
        log.append([Message(topic, b"k", b"x")] * 4)
        offsets = log.offsets(topic)
        assert sorted(offsets) == [0, 1, 2]
        assert offsets[partition_for(b"k", 3)].end == 4
        assert all(o.start == 0 for o in offsets.values())

    def test_creating_an_existing_topic_keeps_its_partitions(self, log: Log, topic: str) -> None:
        assert log.create_topic(topic, 3) == 3
        assert log.partition_count(topic) == 3

    def test_an_unknown_topic_is_a_configuration_error(self, log: Log) -> None:
        with pytest.raises(ConfigurationError, match="does not exist"):
            log.append([Message(unique("missing"), b"k", b"v")])

    def test_a_lone_member_owns_every_partition_and_reads_from_the_start(
        self, log: Log, topic: str
    ) -> None:
        log.append([Message(topic, f"k{i}".encode(), b"v") for i in range(20)])
        owner = Owner()
        consumer = log.consumer(unique("group"), [topic], owner)
        try:
            records: list[Record] = []
            poll_until(
                [consumer], lambda: len(owner.owned) == 3 and len(records) >= 20, into=records
            )
            assert consumer.assignment() == frozenset(TopicPartition(topic, p) for p in range(3))
            assert len(records) == 20
            for partition in range(3):
                offsets = [r.offset for r in records if r.partition == partition]
                assert offsets == sorted(offsets) == list(range(len(offsets)))
        finally:
            consumer.close()

    def test_a_spread_consumer_reads_every_partitions_records_once_and_in_order(
        self, log: Log, topic: str
    ) -> None:
        log.append([Message(topic, f"k{i}".encode(), b"v") for i in range(60)])
        owner = Owner()
        consumer = log.consumer(unique("group"), [topic], owner, spread=True)
        try:
            records: list[Record] = []
            deadline = time.monotonic() + 60
            while len(records) < 60 and time.monotonic() < deadline:
                records += consumer.poll(0.05, 7)  # fewer than a fetch holds
            assert len(records) == 60
            for partition in range(3):
                offsets = [r.offset for r in records if r.partition == partition]
                assert offsets == list(range(len(offsets)))
        finally:
            consumer.close()

    def test_poll_returns_nothing_once_it_has_caught_up(self, log: Log, topic: str) -> None:
        owner = Owner()
        consumer = log.consumer(unique("group"), [topic], owner)
        try:
            poll_until([consumer], lambda: len(owner.owned) == 3)
            assert consumer.poll(0.2, 100) == []
            log.append([Message(topic, b"late", b"v")])
            got: list[Record] = []
            poll_until([consumer], lambda: bool(got), into=got)
            assert [r.value for r in got] == [b"v"]
        finally:
            consumer.close()

    def test_seek_rewinds_a_partition(self, log: Log, topic: str) -> None:
        log.append([Message(topic, b"k", str(i).encode()) for i in range(5)])
        tp = TopicPartition(topic, partition_for(b"k", 3))
        owner = Owner()
        consumer = log.consumer(unique("group"), [topic], owner)
        try:
            seen: list[Record] = []
            poll_until([consumer], lambda: len(owner.owned) == 3 and len(seen) >= 5, into=seen)
            consumer.seek(tp, 3)
            again: list[Record] = []
            poll_until([consumer], lambda: len(again) >= 2, into=again)
            assert [r.value for r in again] == [b"3", b"4"]
        finally:
            consumer.close()

    def test_committed_offsets_are_reported_for_the_group(self, log: Log, topic: str) -> None:
        group = unique("group")
        owner = Owner()
        consumer = log.consumer(group, [topic], owner)
        try:
            poll_until([consumer], lambda: len(owner.owned) == 3)
            consumer.commit({TopicPartition(topic, 1): 7})
            assert log.committed(group, topic) == {1: 7}
        finally:
            consumer.close()

    def test_offsets_committed_without_waiting_are_reported_once_they_land(
        self, log: Log, topic: str
    ) -> None:
        group = unique("group")
        owner = Owner()
        consumer = log.consumer(group, [topic], owner)
        try:
            poll_until([consumer], lambda: len(owner.owned) == 3)
            consumer.commit({TopicPartition(topic, 2): 5}, wait=False)
            poll_until([consumer], lambda: log.committed(group, topic) == {2: 5})
        finally:
            consumer.close()

    def test_a_new_member_resumes_from_the_committed_offset(self, log: Log, topic: str) -> None:
        log.append([Message(topic, b"k", str(i).encode()) for i in range(6)])
        tp = TopicPartition(topic, partition_for(b"k", 3))
        group = unique("group")
        first = log.consumer(group, [topic], (owner := Owner()))
        poll_until([first], lambda: len(owner.owned) == 3)
        first.commit({tp: 4})
        first.close()
        second = log.consumer(group, [topic], (owner2 := Owner()))
        try:
            got: list[Record] = []
            poll_until([second], lambda: len(owner2.owned) == 3 and len(got) >= 2, into=got)
            assert [r.value for r in got] == [b"4", b"5"]
        finally:
            second.close()

    def test_two_members_split_the_partitions_without_overlap(self, log: Log) -> None:
        topic = unique("topic")
        log.create_topic(topic, 6)
        group = unique("group")
        a, b = Owner(), Owner()
        first = log.consumer(group, [topic], a)
        second = log.consumer(group, [topic], b)
        try:
            poll_until([first, second], lambda: len(a.owned) == 3 and len(b.owned) == 3)
            assert not a.owned & b.owned
            assert first.assignment() | second.assignment() == {
                TopicPartition(topic, p) for p in range(6)
            }
        finally:
            first.close()
            second.close()

    def test_a_leaving_member_hands_its_partitions_to_the_other(self, log: Log) -> None:
        topic = unique("topic")
        log.create_topic(topic, 4)
        group = unique("group")
        a, b = Owner(), Owner()
        first = log.consumer(group, [topic], a)
        second = log.consumer(group, [topic], b)
        try:
            poll_until([first, second], lambda: len(a.owned) == 2 and len(b.owned) == 2)
            first.close()
            poll_until([second], lambda: len(b.owned) == 4)
            assert second.assignment() == {TopicPartition(topic, p) for p in range(4)}
        finally:
            second.close()

    def test_a_member_consumes_several_topics(self, log: Log) -> None:
        topics = [unique("topic"), unique("topic")]
        for name in topics:
            log.create_topic(name, 2)
            log.append([Message(name, b"k", name.encode())])
        owner = Owner()
        consumer = log.consumer(unique("group"), topics, owner)
        try:
            got: list[Record] = []
            poll_until([consumer], lambda: len(owner.owned) == 4 and len(got) >= 2, into=got)
            assert sorted(r.value for r in got) == sorted(t.encode() for t in topics)
        finally:
            consumer.close()

    def test_partitions_a_listener_failed_to_take_are_offered_again_before_records_flow(
        self, log: Log, topic: str
    ) -> None:
        log.append([Message(topic, f"k{i}".encode(), b"v") for i in range(20)])
        owner = RefusesFirstAssignment()
        consumer = log.consumer(unique("group"), [topic], owner)
        try:
            with pytest.raises(BackendUnavailableError, match="the store is down"):
                poll_until([consumer], lambda: False)
            assert owner.refused
            assert owner.owned == set()
            assert consumer.assignment() == frozenset()
            records: list[Record] = []
            poll_until(
                [consumer], lambda: len(owner.owned) == 3 and len(records) >= 20, into=records
            )
            assert set(owner.refused) <= set(owner.assigned)
            assert sorted(owner.assigned) == [TopicPartition(topic, p) for p in range(3)]
            assert len(records) == 20
            for partition in range(3):
                offsets = [r.offset for r in records if r.partition == partition]
                assert offsets == list(range(len(offsets)))
        finally:
            consumer.close()

    def test_a_member_whose_listener_fails_to_let_go_gives_the_partitions_up_all_the_same(
        self, log: Log
    ) -> None:
        topic = unique("topic")
        log.create_topic(topic, 4)
        group = unique("group")
        a, b = FailsFirstRevocation(), Owner()
        first = log.consumer(group, [topic], a)
        try:
            poll_until([first], lambda: len(a.owned) == 4)
            second = log.consumer(group, [topic], b)
            try:
                with pytest.raises(BackendUnavailableError, match="the store is down"):
                    poll_until([first, second], lambda: False)
                assert a.failed
                assert first.assignment().isdisjoint(a.failed)
                poll_until(
                    [first, second],
                    lambda: len(b.owned) == 2 and len(first.assignment()) == 2,
                )
                assert set(a.failed) == b.owned == second.assignment()
                assert first.assignment() == {TopicPartition(topic, p) for p in range(4)} - b.owned
                log.append([Message(topic, f"k{i}".encode(), b"v") for i in range(40)])
                by_first: list[Record] = []
                by_second: list[Record] = []

                def all_delivered() -> bool:
                    by_first.extend(first.poll(0.05, 500))
                    by_second.extend(second.poll(0.05, 500))
                    return len(by_first) + len(by_second) >= 40

                eventually(all_delivered, timeout=60.0, step=0.0)
                assert {r.topic_partition for r in by_first} <= first.assignment()
                assert {r.topic_partition for r in by_second} <= second.assignment()
                assert len(by_first) + len(by_second) == 40
            finally:
                second.close()
        finally:
            first.close()
