"""The Kafka log passes the log contract on a real broker, and keeps Kafka's promises."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from types import SimpleNamespace

import confluent_kafka as ck
import pytest
from confluent_kafka.admin import ConfigResource

from loglane.errors import BackendUnavailableError, BadURLError, ConfigurationError
from loglane.logs._kafka_consumer import KafkaConsumer, share_out
from loglane.logs.base import Consumer, Log
from loglane.logs.kafka import KafkaLog
from loglane.logs.kafka_settings import KafkaSettings
from loglane.partitioner import partition_for
from loglane.records import Message, Record, TopicPartition
from loglane.urls import open_log
from tests.contracts.log_contract import LogContract, Owner, poll_until, unique
from tests.kafka_broker import Broker, admin

# Short session timeouts make rebalances after a vanished member quick.
FAST_GROUPS = {
    "consumer.session.timeout.ms": 6000,
    "consumer.heartbeat.interval.ms": 500,
}


@pytest.mark.kafka
class TestKafkaLog(LogContract):
    @pytest.fixture
    def log(self, kafka_broker: Broker) -> Iterator[Log]:
        log = KafkaLog.from_url(kafka_broker.url(**FAST_GROUPS))
        yield log
        log.close()


@pytest.mark.kafka
class TestKafkaLogOnTheConsumerGroupProtocol(LogContract):
    """The same contract with KIP-848 groups, where the broker assigns the partitions."""

    @pytest.fixture
    def log(self, kafka_broker: Broker) -> Iterator[Log]:
        log = KafkaLog.from_url(kafka_broker.url(**{"consumer.group.protocol": "consumer"}))
        yield log
        log.close()


@pytest.fixture
def kafka_log(kafka_broker: Broker) -> Iterator[KafkaLog]:
    log = KafkaLog.from_url(kafka_broker.url(**FAST_GROUPS))
    yield log
    log.close()


def _records(consumer: Consumer, count: int) -> list[Record]:
    got: list[Record] = []
    poll_until([consumer], lambda: len(got) >= count, into=got)
    return got


@pytest.mark.kafka
def test_a_key_librdkafka_places_with_murmur2_random_lands_on_partition_for(
    kafka_broker: Broker, kafka_log: KafkaLog
) -> None:
    topic = unique("placement")
    kafka_log.create_topic(topic, 7)
    keys = [b"", b"a", b"ab", b"abc", "ключ-ü".encode(), bytes(range(256))]
    keys += [f"order-{i}".encode() for i in range(200)]
    producer = ck.Producer(
        {"bootstrap.servers": kafka_broker.bootstrap, "partitioner": "murmur2_random"}
    )
    placed: dict[bytes, int] = {}

    def remember(error: ck.KafkaError | None, message: ck.Message) -> None:
        assert error is None, error
        placed[message.key() or b""] = message.partition() or 0

    for key in keys:
        producer.produce(topic, b"x", key, on_delivery=remember)
    assert producer.flush(30) == 0
    assert placed == {key: partition_for(key, 7) for key in keys}


@pytest.mark.kafka
def test_an_unreachable_broker_is_one_clear_backend_unavailable_error() -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        open_log("kafka://127.0.0.1:1?connect_timeout=1")
    message = str(caught.value)
    assert "\n" not in message
    assert "127.0.0.1:1" in message
    assert "scripts/kafka start" in message


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("kafka://", "host:port"),
        ("kafka://localhost", "is not host:port"),
        ("kafka://h:9092?partitions=0", "positive whole number"),
        ("kafka://h:9092?create_topics=maybe", "true or false"),
        ("kafka://h:9092?colour=blue", "unknown option 'colour'"),
        ("kafka://h:9092?connect_timeout=soon", "positive number of seconds"),
    ],
)
def test_a_bad_kafka_url_says_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(BadURLError, match=complaint):
        KafkaSettings.from_url(url)


def test_url_options_become_topic_settings_and_librdkafka_settings() -> None:
    settings = KafkaSettings.from_url(
        "kafka://k1:9092,k2:9092?partitions=6&replication_factor=3&retention_ms=60000"
        "&create_topics=false&security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512"
        "&sasl_username=app&sasl_password=p%40ss&ssl_ca_location=/ca.pem"
        "&socket.keepalive.enable=true&consumer.session.timeout.ms=6000&producer.linger.ms=20"
    )
    assert settings.bootstrap_servers == "k1:9092,k2:9092"
    assert (settings.partitions, settings.replication_factor) == (6, 3)
    assert settings.retention_ms == 60000
    assert settings.create_topics is False
    assert settings.client == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "app",
        "sasl.password": "p@ss",
        "ssl.ca.location": "/ca.pem",
        "socket.keepalive.enable": "true",
    }
    assert settings.consumer == {"session.timeout.ms": "6000"}
    assert settings.producer == {"linger.ms": "20"}


@pytest.mark.kafka
def test_a_missing_topic_is_a_configuration_error_when_creation_is_off(
    kafka_broker: Broker,
) -> None:
    log = open_log(kafka_broker.url(create_topics="false"))
    try:
        with pytest.raises(ConfigurationError, match="create_topics=false"):
            log.create_topic(unique("absent"), 3)
    finally:
        log.close()


@pytest.mark.kafka
def test_topics_are_created_with_the_urls_partitions_and_retention(kafka_broker: Broker) -> None:
    log = open_log(kafka_broker.url(partitions=5, retention_ms=3_600_000))
    topic = unique("settings")
    try:
        assert log.create_topic(topic, 3) == 5
        assert log.create_topic(topic, 8) == 5
    finally:
        log.close()
    client = admin(kafka_broker)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = client.describe_configs([resource])[resource].result()
    assert configs["retention.ms"].value == "3600000"


@pytest.mark.kafka
def test_a_record_the_broker_refuses_raises_instead_of_vanishing(
    kafka_broker: Broker, kafka_log: KafkaLog
) -> None:
    topic = unique("small")
    client = admin(kafka_broker)
    new = ck.admin.NewTopic(topic, 1, 1, config={"max.message.bytes": "1024"})  # type: ignore[attr-defined]
    client.create_topics([new])[topic].result()
    with pytest.raises(ConfigurationError, match="larger than Kafka accepts"):
        kafka_log.append([Message(topic, b"k", b"x" * 10_000)])
    (position,) = kafka_log.append([Message(topic, b"k", b"fits")])
    assert [r.value for r in kafka_log.read(TopicPartition(topic, 0), position.offset, 5)] == [
        b"fits"
    ]


class SeekingOwner(Owner):
    """Seeks each partition it is given to a fixed offset, as the worker does from its store."""

    def __init__(self, consumer_ref: list[object], offset: int) -> None:
        super().__init__()
        self.consumer_ref = consumer_ref
        self.offset = offset

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        super().on_assigned(partitions)
        for tp in partitions:
            self.consumer_ref[0].seek(tp, self.offset)  # type: ignore[attr-defined]


@pytest.mark.kafka
def test_a_seek_inside_the_assignment_callback_sets_where_consumption_starts(
    kafka_log: KafkaLog,
) -> None:
    topic = unique("seek")
    kafka_log.create_topic(topic, 1)
    kafka_log.append([Message(topic, b"k", str(i).encode()) for i in range(6)])
    ref: list[object] = []
    owner = SeekingOwner(ref, 4)
    consumer = kafka_log.consumer(unique("group"), [topic], owner)
    ref.append(consumer)
    try:
        assert [r.value for r in _records(consumer, 2)] == [b"4", b"5"]
    finally:
        consumer.close()


class FailingOnce(Owner):
    """Fails to take its first assignment, as a worker does whose store is briefly down."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        if not self.failed:
            self.failed = True
            raise BackendUnavailableError("the store is down")
        super().on_assigned(partitions)


@pytest.mark.kafka
def test_partitions_a_listener_failed_to_take_are_offered_again_before_records_flow(
    kafka_log: KafkaLog,
) -> None:
    topic = unique("retry")
    kafka_log.create_topic(topic, 2)
    kafka_log.append([Message(topic, f"k{i}".encode(), b"v") for i in range(10)])
    owner = FailingOnce()
    consumer = kafka_log.consumer(unique("group"), [topic], owner)
    try:
        with pytest.raises(BackendUnavailableError):
            poll_until([consumer], lambda: False, timeout=60)
        assert owner.owned == set()
        assert consumer.assignment() == frozenset()
        got = _records(consumer, 10)
        assert owner.owned == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
        assert len(got) == 10
    finally:
        consumer.close()


@pytest.mark.kafka
def test_a_rebalance_moves_only_the_partitions_that_change_hands(kafka_log: KafkaLog) -> None:
    topic = unique("sticky")
    kafka_log.create_topic(topic, 6)
    group = unique("group")
    a, b = Owner(), Owner()
    first = kafka_log.consumer(group, [topic], a)
    try:
        poll_until([first], lambda: len(a.owned) == 6)
        second = kafka_log.consumer(group, [topic], b)
        try:
            poll_until([first, second], lambda: len(a.owned) == 3 and len(b.owned) == 3)
            assert len(a.revoked) == 3  # cooperative: the three that stay were never revoked
            assert set(b.assigned) == set(a.revoked)
        finally:
            second.close()
    finally:
        first.close()


@pytest.mark.kafka
def test_a_member_that_stopped_polling_loses_its_partitions_and_commits_nothing_for_them(
    kafka_broker: Broker,
) -> None:
    log = KafkaLog.from_url(
        kafka_broker.url(
            **{
                "consumer.session.timeout.ms": 2000,
                "consumer.heartbeat.interval.ms": 300,
                "consumer.max.poll.interval.ms": 2500,
            }
        )
    )
    topic = unique("zombie")
    log.create_topic(topic, 2)
    group = unique("group")
    tp = TopicPartition(topic, 0)
    z, h = Owner(), Owner()
    zombie = log.consumer(group, [topic], z)
    poll_until([zombie], lambda: len(z.owned) == 2)
    heir = log.consumer(group, [topic], h)
    try:
        # the zombie stops polling; the heir keeps polling and inherits both partitions
        poll_until([heir], lambda: len(h.owned) == 2, timeout=90)
        heir.commit({tp: 5})
        zombie.commit({tp: 1})
        assert log.committed(group, topic) == {0: 5}
        # when the zombie polls again it learns it lost them, and still commits nothing
        poll_until([zombie], lambda: not z.owned, timeout=30)
        assert zombie.assignment() == frozenset()
        zombie.commit({tp: 2})
        assert log.committed(group, topic) == {0: 5}
    finally:
        zombie.close()
        heir.close()
        log.close()


@pytest.mark.kafka
def test_reading_below_the_retained_start_reads_from_the_start(
    kafka_broker: Broker, kafka_log: KafkaLog
) -> None:
    topic = unique("trimmed")
    kafka_log.create_topic(topic, 1)
    kafka_log.append([Message(topic, b"k", str(i).encode()) for i in range(5)])
    # what retention does to old segments, done at once: the log now starts at offset 3
    cut = ck.TopicPartition(topic, 0, 3)
    client = admin(kafka_broker)
    client.delete_records([cut])[cut].result()
    assert kafka_log.offsets(topic)[0].start == 3
    assert [r.value for r in kafka_log.read(TopicPartition(topic, 0), 0, 100)] == [b"3", b"4"]


class LeaderMoving:
    """The admin client, with offsets answered as the broker answered them while a killed
    broker's partitions moved to new leaders (three-broker test): -1001 and no error."""

    def __init__(self, admin_client: object) -> None:
        self._admin = admin_client

    def list_offsets(self, request: dict[object, object], **_: object) -> dict[object, object]:
        answers: dict[object, object] = {}
        for key in request:
            answer: Future[SimpleNamespace] = Future()
            answer.set_result(SimpleNamespace(offset=ck.OFFSET_INVALID))
            answers[key] = answer
        return answers

    def __getattr__(self, name: str) -> object:
        return getattr(self._admin, name)


def test_an_offset_the_broker_gives_as_unknown_is_unavailable_not_the_log_end(
    kafka_log: KafkaLog,
) -> None:
    """Taken for the end, -1001 told a resuming worker its stored position lay beyond the log
    (`PositionAheadOfLogError`), which stopped it for good; unavailable, it tries again."""
    topic = unique("moving")
    kafka_log.create_topic(topic, 2)
    kafka_log._admin = LeaderMoving(kafka_log._admin)  # type: ignore[assignment]
    with pytest.raises(BackendUnavailableError, match=r"no offset for partition\(s\) \[0, 1\]"):
        kafka_log.offsets(topic)


def _at(partition: int, offset: int) -> Record:
    return Record("t", partition, offset, None, b"", (), 0)


def _offsets(records: list[Record], partition: int) -> list[int]:
    return [record.offset for record in records if record.partition == partition]


def test_a_poll_takes_no_more_than_each_partitions_share_and_holds_the_rest_back() -> None:
    fetched = [_at(0, i) for i in range(10)] + [_at(1, i) for i in range(2)]
    fetched += [_at(2, i) for i in range(10)]
    taken, held = share_out(fetched, 12)
    # a share of 4 each (partition 1 has 2): no partition's backlog lengthens the pass
    assert [_offsets(taken, p) for p in range(3)] == [[0, 1, 2, 3], [0, 1], [0, 1, 2, 3]]
    assert [_offsets(held, p) for p in range(3)] == [[4, 5, 6, 7, 8, 9], [], [4, 5, 6, 7, 8, 9]]
    assert share_out(fetched, 30) == (fetched, [])


def test_a_partition_fetched_first_leaves_the_busy_partitions_not_fetched_yet_their_shares() -> (
    None
):
    fetched = [_at(0, i) for i in range(10)]
    taken, held = share_out(fetched, 8, busy=4)
    assert (_offsets(taken, 0), _offsets(held, 0)) == ([0, 1], [2, 3, 4, 5, 6, 7, 8, 9])
    assert share_out(fetched, 8) == (fetched[:8], fetched[8:])


def test_records_held_back_are_taken_oldest_first_so_no_partition_starves() -> None:
    taken, held = share_out([_at(0, 0), _at(1, 0), _at(0, 1)], 1)
    assert (taken, held) == ([_at(0, 0)], [_at(1, 0), _at(0, 1)])
    taken, held = share_out(held, 1)
    assert (taken, held) == ([_at(1, 0)], [_at(0, 1)])


@pytest.mark.kafka
def test_a_spread_poll_takes_no_more_than_an_equal_share_of_any_partition_while_all_have_records(
    kafka_log: KafkaLog,
) -> None:
    topic = unique("shares")
    kafka_log.create_topic(topic, 4)
    kafka_log.append([Message(topic, f"k{i}".encode(), str(i).encode()) for i in range(400)])
    sizes = {partition: offsets.end for partition, offsets in kafka_log.offsets(topic).items()}
    ref: list[object] = []
    consumer = kafka_log.consumer(unique("group"), [topic], SeekingOwner(ref, 0), spread=True)
    ref.append(consumer)
    try:
        got: list[Record] = []
        deadline = time.monotonic() + 60
        while len(got) < 400:
            assert time.monotonic() < deadline, f"got {len(got)} of 400 records"
            all_busy = all(_offsets(got, p) != list(range(sizes[p])) for p in range(4))
            taken = consumer.poll(0.5, 40)
            if all_busy:  # whichever partitions librdkafka fetched first
                assert max(Counter(record.partition for record in taken).values(), default=0) <= 10
            got += taken
        assert all(_offsets(got, p) == list(range(sizes[p])) for p in range(4))
    finally:
        consumer.close()


@pytest.mark.kafka
def test_a_seek_drops_the_records_a_poll_held_back(kafka_log: KafkaLog) -> None:
    topic = unique("held")
    kafka_log.create_topic(topic, 1)
    kafka_log.append([Message(topic, b"k", str(i).encode()) for i in range(40)])
    consumer = kafka_log.consumer(unique("group"), [topic], Owner(), spread=True)
    assert isinstance(consumer, KafkaConsumer)
    try:
        got: list[Record] = []
        while not consumer._held:  # until a poll fetched more than it took
            got += consumer.poll(1.0, 5)
            assert len(got) < 40, "no poll held records back"
        consumer.seek(TopicPartition(topic, 0), 2)
        after: list[Record] = []
        poll_until([consumer], lambda: len(after) >= 10, into=after)
        assert [record.offset for record in after[:10]] == list(range(2, 12))
    finally:
        consumer.close()
