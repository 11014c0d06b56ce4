"""The peers benchmarks' shared parts: the backlog, its topics, watching a drain, checking it.

Runs in the repo's .venv (it builds the commands with Loglane's own envelope, so every system
reads the very same bytes, CloudEvents headers included; the peers read the JSON body).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka as ck
import psycopg
from confluent_kafka.admin import AdminClient, NewTopic
from loglane_app import Credit, view_service

from loglane.commands import command_message
from loglane.records import Message

REPO = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).resolve().parent
KEYS = 10_000
ACCOUNTS_TABLE = (
    'CREATE TABLE "{schema}".accounts '
    "(key TEXT PRIMARY KEY, count BIGINT NOT NULL, total BIGINT NOT NULL)"
)
# Filler for the command bodies (~600 bytes of JSON each), varied per command.
_FILLER = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(40))

Header = tuple[str, bytes]
_TEMPLATE = view_service("peers", 4)  # for posting: only its handler's key= matters


def postgres_url() -> str:
    """What `scripts/postgres url` prints (it starts nothing: run `scripts/postgres start`)."""
    return subprocess.run(
        [str(REPO / "scripts" / "postgres"), "url"], capture_output=True, text=True, check=True
    ).stdout.strip()


@dataclass(frozen=True, slots=True)
class Backlog:
    """The commands of one round, as records, and what the accounts table must hold after."""

    records: list[tuple[bytes, bytes, list[Header]]]
    fold: dict[str, tuple[int, int]]  # key -> (count, total)

    @property
    def mean_body(self) -> float:
        return sum(len(value) for _, value, _ in self.records) / max(len(self.records), 1)


def credit(seq: int, keys: int = KEYS) -> Credit:
    """Command `seq` of every backlog: the same key, amount and body each time."""
    start = seq % 1000
    return Credit(
        key=f"k{seq % keys}",
        seq=seq,
        amount=1 + (seq * 7919) % 1000,
        note=_FILLER[start : start + 552],
    )


def messages(start: int, stop: int, topic: str = "") -> list[Message]:
    """Commands `start` to `stop` as Loglane posts them (CloudEvents binary mode), to `topic`."""
    posted = (command_message(_TEMPLATE, credit(seq))[1] for seq in range(start, stop))
    return [Message(topic, m.key, m.value, m.headers) for m in posted]


def make_backlog(events: int) -> Backlog:
    records: list[tuple[bytes, bytes, list[Header]]] = []
    fold: dict[str, tuple[int, int]] = {}
    for message in messages(0, events):
        records.append((message.key or b"", message.value, list(message.headers)))
    for seq in range(events):
        command = credit(seq)
        count, total = fold.get(command.key, (0, 0))
        fold[command.key] = (count + 1, total + command.amount)
    return Backlog(records, fold)


def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    topics = [NewTopic(name, partitions, 1) for name in names]
    for future in admin.create_topics(topics, operation_timeout=30).values():
        future.result()


def delete_topics(bootstrap: str, names: Iterable[str], groups: Iterable[str] = ()) -> None:
    """Delete what exists of `names` and `groups`; missing ones are no error."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [name for name in names if name in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result()
    if groups:
        for future in admin.delete_consumer_groups(list(groups)).values():
            with contextlib.suppress(ck.KafkaException):  # never created, or has members
                future.result()


def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes, list[Header]]]
) -> None:
    """Write the backlog to `topic`, placed by murmur2 as Java clients and Loglane place keys."""
    producer = ck.Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 50,
            "partitioner": "murmur2_random",
        }
    )
    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not write the backlog to {topic}")


@dataclass(frozen=True, slots=True)
class Drain:
    """A drain as seen from outside: from the first output on the output topic (`done_at_start`
    commands were handled by then) to the moment the group's committed offsets reach the end."""

    seconds: float
    counted: int

    @property
    def rate(self) -> float:
        return self.counted / self.seconds


def watch_drain(
    bootstrap: str,
    *,
    group: str,
    topic_in: str,
    topic_out: str,
    partitions: int,
    events: int,
    alive: Callable[[], None],
    at_start: Callable[[], None],
    at_end: Callable[[], None],
    timeout: float,
) -> Drain:
    """Poll Kafka every 50 ms until `group` has committed all `events` of `topic_in`.

    `alive` raises if the system under test died; `at_start` and `at_end` take the readings
    (CPU, memory) at the two ends of the measured window.
    """
    watcher = ck.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    inputs = [ck.TopicPartition(topic_in, p) for p in range(partitions)]
    outputs = [ck.TopicPartition(topic_out, p) for p in range(partitions)]
    deadline = time.monotonic() + timeout
    started: float | None = None
    done_at_start = 0
    try:
        while True:
            alive()
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{group} did not drain {topic_in} within {timeout:.0f} s")
            if started is None:
                written = sum(watcher.get_watermark_offsets(tp, timeout=5)[1] for tp in outputs)
                if written > 0:
                    started, done_at_start = now, min(written, events)
                    at_start()
            committed = group_committed(watcher, inputs)
            if started is not None and committed >= events:
                at_end()
                if done_at_start >= events:  # drained between two polls: no window to time
                    raise RuntimeError("the drain was too short to time; use more --events")
                return Drain(now - started, events - done_at_start)
            time.sleep(0.05)
    finally:
        watcher.close()


def group_committed(watcher: ck.Consumer, inputs: list[ck.TopicPartition]) -> int:
    """The group's committed offsets over `inputs`; 0 while its coordinator is not ready (a
    fresh broker loads the offsets topic for a few seconds after it starts)."""
    try:
        return sum(max(tp.offset, 0) for tp in watcher.committed(inputs, timeout=5))
    except ck.KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, ck.KafkaError) and (
            error.retriable() or error.code() in _COORDINATOR_NOT_READY
        ):
            return 0
        raise


_COORDINATOR_NOT_READY = (
    ck.KafkaError.NOT_COORDINATOR,
    ck.KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    ck.KafkaError.COORDINATOR_NOT_AVAILABLE,
)


@dataclass(frozen=True, slots=True)
class Outputs:
    records: int
    distinct: int
    duplicates: int
    missing: int


def check_outputs(bootstrap: str, topic: str, events: int) -> Outputs:
    """Read `topic` to its end; every output carries the `seq` of its command."""
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "peers-check",
            "enable.auto.commit": False,
        }
    )
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    ends = {}
    for p in metadata.partitions:
        low, high = consumer.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=10)
        if high > low:
            ends[p] = high
    consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in ends])
    seqs: Counter[int] = Counter()
    while ends:
        for message in consumer.consume(10_000, 1.0):
            if message.error() is not None:
                continue
            seqs[json.loads(message.value() or b"{}")["seq"]] += 1
            if (message.offset() or 0) + 1 >= ends.get(message.partition() or 0, 1 << 62):
                del ends[message.partition() or 0]
    consumer.close()
    records = sum(seqs.values())
    distinct = sum(1 for seq in seqs if 0 <= seq < events)
    return Outputs(records, distinct, records - distinct, events - distinct)


def topic_size(bootstrap: str, topic: str) -> int:
    """Records in `topic`; 0 if it does not exist."""
    consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "peers-check"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        return sum(
            high - low
            for low, high in (
                consumer.get_watermark_offsets(ck.TopicPartition(topic, p), timeout=10)
                for p in metadata.partitions
            )
        )
    finally:
        consumer.close()


def wrong_rows(postgres: str, query: str, fold: dict[str, tuple[int, int]]) -> int:
    """Keys whose (count, total) from `query` differ from the fold of the input, or are missing
    or extra."""
    with psycopg.connect(postgres) as conn:
        found = {key: (count, total) for key, count, total in conn.execute(query)}  # type: ignore[arg-type]
    return sum(1 for key in fold.keys() | found.keys() if fold.get(key) != found.get(key))


def drop_schema(postgres: str, schema: str) -> None:
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]
