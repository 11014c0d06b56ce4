"""Loglane on a three-broker Kafka cluster whose brokers are SIGKILLed mid-run.

The cluster is this module's own (`scripts/kafka cluster`, three KRaft nodes that are each a
broker and a controller, on the six ports after the session's brokers; see
tests/kafka_broker.py), started before its first test and stopped after its last.

The fault test runs the ledger landscape (tests/apps/ledger.py) as real `loglane worker`
processes, three on `ledger` and one on `audit`, every topic with 6 partitions and, from the
cluster's size, three replicas of which two must be in sync. It feeds
LOGLANE_CLUSTER_COMMANDS deposits (default 50,000) in three parts, SIGKILLs the broker that
leads the most partitions while the second part is appended and restarts it, then kills and
restarts another while the third part is, and checks at the end that every view equals the
fold of the input, that every command has its one output event, and that each account's
events are in sequence. Releasing a part of the input with each kill makes sure the kill
finds work in flight however fast the machine is.

Waits last as long as the landscape keeps moving and fail when it stalls for two minutes;
the counts it saw (commands, broker kills, leader changes) are printed at the end.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from loglane.commands import command_message
from loglane.envelope import output_event_id
from loglane.errors import BackendUnavailableError
from loglane.logs.kafka import KafkaLog
from loglane.records import Message, TopicPartition
from loglane.worker import ensure_topics
from tests.apps.ledger import accounts, assert_folded, deposits, landscape, ledger, tallies
from tests.conftest import eventually, while_progressing
from tests.kafka.test_kafka_chaos import KafkaStack
from tests.kafka_broker import CLUSTER_NODES, Broker, ManagedCluster, admin
from tests.processes import WorkerProcess, landscape_progress

# Waits fail when progress stalls; the suite's 300 s a test would cut a loaded run short.
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(3600)]

COMMANDS = int(os.environ.get("LOGLANE_CLUSTER_COMMANDS", "50000"))
ACCOUNTS = 500
PER_ACCOUNT = max(1, COMMANDS // ACCOUNTS)
CHUNK = 500
PARTS = 3
TOPICS = [t for s in landscape for t in (s.input_topic, s.output_topic, s.dlq_topic)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedCluster]:
    managed = ManagedCluster.after_brokers(tmp_path_factory.mktemp("kafka-cluster"))
    managed.reset()
    managed.start()
    try:
        yield managed
    finally:
        managed.reset()  # kills every node: its data goes too, so a clean stop saves nothing


# -- replication chosen from the cluster's size -------------------------------------------------


def replica_counts(broker: Broker, topic: str) -> list[int]:
    """The number of replicas of each partition of `topic`, once the broker asked knows the
    topic: its metadata may trail the controller's for a moment after the topic is made."""
    client = admin(broker)
    counts: list[int] = []

    def known() -> bool:
        nonlocal counts
        metadata = client.list_topics(topic=topic, timeout=30).topics[topic]
        counts = [len(metadata.partitions[p].replicas) for p in sorted(metadata.partitions)]
        return metadata.error is None and bool(counts)

    eventually(known, message=f"the broker knows the partitions of {topic}")
    return counts


def topic_setting(broker: Broker, topic: str, name: str) -> str:
    client = admin(broker)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = client.describe_configs([resource], request_timeout=30)[resource].result()
    value: str = entries[name].value
    return value


def test_topics_created_on_three_brokers_get_three_replicas_two_of_them_in_sync(
    cluster: ManagedCluster,
) -> None:
    broker = cluster.broker()
    log = KafkaLog.from_url(broker.url())
    try:
        log.create_topic("sized.in", 2)
    finally:
        log.close()

    assert replica_counts(broker, "sized.in") == [3, 3]
    assert topic_setting(broker, "sized.in", "min.insync.replicas") == "2"


def test_a_url_asking_for_one_replica_on_three_brokers_gets_it_with_one_warning(
    cluster: ManagedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    broker = cluster.broker()
    caplog.set_level(logging.WARNING, logger="loglane.kafka")
    log = KafkaLog.from_url(broker.url(replication_factor=1))
    try:
        log.create_topic("unsafe.in", 1)
        log.create_topic("unsafe.out", 1)
    finally:
        log.close()

    assert replica_counts(broker, "unsafe.in") == [1]
    warnings = [r.getMessage() for r in caplog.records if r.name == "loglane.kafka"]
    assert len(warnings) == 1, warnings
    assert "replication_factor=1 on a cluster of 3 brokers" in warnings[0]


# -- the fault test -----------------------------------------------------------------------------


@dataclass
class LeaderWatch:
    """Samples the leaders of the landscape's partitions in the background and counts how
    often a partition's leader became another broker."""

    broker: Broker
    changes: int = 0
    samples: int = 0
    _leaders: dict[tuple[str, int], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> LeaderWatch:
        self._sample(admin(self.broker))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        client = admin(self.broker)
        while not self._stop.wait(0.1):
            self._sample(client)

    def _sample(self, client: AdminClient) -> None:
        try:
            metadata = client.list_topics(timeout=5)
        except KafkaException:
            return  # the broker asked is the one just killed; the next sample asks another
        with self._lock:
            for topic in TOPICS:
                found = metadata.topics.get(topic)
                for p, partition in (found.partitions if found else {}).items():
                    if partition.leader < 0:
                        continue  # between leaders: the next one counts
                    before = self._leaders.get((topic, p))
                    if before is not None and before != partition.leader:
                        self.changes += 1
                    self._leaders[topic, p] = partition.leader
            self.samples += 1

    def leaders(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._leaders)

    def busiest(self, *, other_than: int | None = None) -> int:
        """The broker that leads the most partitions (of those other than `other_than`)."""
        led = Counter(b for b in self.leaders().values() if b != other_than)
        return led.most_common(1)[0][0]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


class Feeder:
    """Appends the deposits from a thread, one part each time the test releases one,
    riding out a broker that is away."""

    def __init__(self, stack: KafkaStack) -> None:
        self.stack = stack
        messages = [command_message(ledger, d) for d in deposits(ACCOUNTS, PER_ACCOUNT)]
        size = -(-len(messages) // PARTS)
        self._parts = [messages[i : i + size] for i in range(0, len(messages), size)]
        self._released = threading.Semaphore(0)
        self.request_ids: list[str] = []
        self.retried = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Let the next part go."""
        self._released.release()

    def _run(self) -> None:
        try:
            log = self.stack.log()
            try:
                for part in self._parts:
                    self._released.acquire()
                    for start in range(0, len(part), CHUNK):
                        self._append(log, part[start : start + CHUNK])
            finally:
                log.close()
        except BaseException as exc:  # reported by the test's waits
            self.error = exc
        self.done.set()

    def _append(self, log: KafkaLog, chunk: list[tuple[str, Message]]) -> None:
        while True:
            try:
                log.append([message for _, message in chunk])
                break
            except BackendUnavailableError:
                # a retried chunk may land twice: the same request ids, dropped as copies
                self.retried += 1
        self.request_ids.extend(rid for rid, _ in chunk)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the feeder failed: {self.error!r}") from self.error


def stored_positions(stack: KafkaStack, service: str) -> dict[TopicPartition, int]:
    store = stack.store(service)
    try:
        return store.positions(service)
    finally:
        store.close()


def caught_up(stack: KafkaStack, feeder: Feeder) -> bool:
    """Every part appended, and every service's positions at its topics' ends."""
    feeder.check()
    if not feeder.done.is_set():
        return False
    log = stack.log()
    try:
        for service in landscape:
            store = stack.store(service.name)
            try:
                positions = store.positions(service.name)
                if store.outbox_backlog(service.name):
                    return False
            finally:
                store.close()
            for topic in service.topics:
                for p, offsets in log.offsets(topic).items():
                    if positions.get(TopicPartition(topic, p), 0) < offsets.end:
                        return False
        return True
    except BackendUnavailableError:
        return False
    finally:
        log.close()


def wait_for_progress(stack: KafkaStack, feeder: Feeder, workers: list[WorkerProcess]) -> None:
    """Wait until the ledger commits something new; every worker must still run."""
    before = stored_positions(stack, "ledger")

    def moved() -> bool:
        feeder.check()
        return stored_positions(stack, "ledger") != before

    eventually(moved, timeout=300, step=0.05, message="the ledger made progress")
    for worker in workers:
        assert worker.process.poll() is None, worker.describe()


def fully_replicated(broker: Broker) -> bool:
    """Every partition of the landscape and of the consumer offsets has three in-sync replicas."""
    client = admin(broker)
    try:
        metadata = client.list_topics(timeout=10)
    except KafkaException:
        return False
    return all(
        len(partition.isrs) == len(CLUSTER_NODES)
        for topic in [*TOPICS, "__consumer_offsets"]
        for partition in metadata.topics[topic].partitions.values()
    )


def wait_fully_replicated(broker: Broker) -> None:
    eventually(
        lambda: fully_replicated(broker),
        timeout=300,
        step=0.2,
        message="every partition has three in-sync replicas",
    )


def kill_leader(cluster: ManagedCluster, watch: LeaderWatch, node: int) -> None:
    """SIGKILL `node` once every partition has three in-sync replicas (so each has another
    to lead it), and wait until no partition of the landscape names it as leader."""
    wait_fully_replicated(cluster.broker())
    cluster.kill(node)
    eventually(
        lambda: node not in watch.leaders().values(),
        timeout=300,
        step=0.1,
        message=f"every partition led by broker {node} has a new leader",
    )


def assert_one_output_per_command_in_order(stack: KafkaStack, request_ids: list[str]) -> int:
    """Every command's `Deposited` is on `ledger.out`, and each account's first copies come in
    sequence; returns how many records the topic holds (re-published copies included)."""
    assert len(set(request_ids)) == ACCOUNTS * PER_ACCOUNT
    seen: set[str] = set()
    sequences: dict[str, list[int]] = defaultdict(list)
    total = 0
    log = stack.log()
    try:
        for p, offsets in log.offsets("ledger.out").items():
            for record in log.read(TopicPartition("ledger.out", p), 0, offsets.end):
                total += 1
                event_id = dict(record.headers)["ce_id"].decode()
                if event_id in seen:
                    continue  # a copy, dropped downstream by its id
                seen.add(event_id)
                data = json.loads(record.value)
                sequences[data["account"]].append(data["seq"])
        for dlq in ("ledger.dlq", "audit.dlq"):
            assert all(o.end == 0 for o in log.offsets(dlq).values()), f"{dlq} is not empty"
    finally:
        log.close()
    assert seen == {output_event_id("ledger", rid, 0) for rid in request_ids}
    in_sequence = list(range(1, PER_ACCOUNT + 1))
    assert all(seqs == in_sequence for seqs in sequences.values())
    assert len(sequences) == ACCOUNTS
    return total


def assert_views_folded(stack: KafkaStack) -> None:
    ledger_store, audit_store = stack.store("ledger"), stack.store("audit")
    try:
        assert_folded(
            partial(ledger_store.get, accounts),
            partial(audit_store.get, tallies),
            ACCOUNTS,
            PER_ACCOUNT,
        )
    finally:
        ledger_store.close()
        audit_store.close()


def test_workers_on_three_brokers_lose_double_and_reorder_nothing_when_leaders_are_killed(
    cluster: ManagedCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    broker = cluster.broker()
    stack = KafkaStack(tmp_path, broker)
    log = stack.log()
    try:
        ensure_topics(log, list(landscape))
    finally:
        log.close()
    assert replica_counts(broker, "ledger.in") == [3] * 6

    workers = [stack.worker("ledger") for _ in range(3)] + [stack.worker("audit")]
    watch = LeaderWatch(broker).start()
    feeder = Feeder(stack)
    kills: list[int] = []
    try:
        feeder.release()
        wait_for_progress(stack, feeder, workers)

        first = watch.busiest()
        kill_leader(cluster, watch, first)
        kills.append(first)
        feeder.release()  # appended while the broker is down
        wait_for_progress(stack, feeder, workers)
        cluster.restart(first)
        wait_fully_replicated(broker)  # the restarted broker caught up

        second = watch.busiest(other_than=first)
        feeder.release()
        kill_leader(cluster, watch, second)
        kills.append(second)
        wait_for_progress(stack, feeder, workers)
        cluster.restart(second)

        services = [service.name for service in landscape]
        while_progressing(
            lambda: caught_up(stack, feeder),
            lambda: (len(feeder.request_ids), landscape_progress(stack, services)),
            message="the landscape caught up",
        )
        for worker in workers:
            assert worker.stop() == 0, worker.describe()
    except BaseException:
        print(cluster.log_tails())
        raise
    finally:
        watch.stop()
        for worker in workers:
            if worker.process.poll() is None:
                worker.kill()

    records = assert_one_output_per_command_in_order(stack, feeder.request_ids)
    assert_views_folded(stack)
    assert watch.changes >= len(kills)  # each killed broker's partitions moved
    with capsys.disabled():
        print(
            f"\nthree brokers: {len(set(feeder.request_ids))} commands, {len(kills)} broker "
            f"kills (brokers {kills[0]} then {kills[1]}), {watch.changes} leader changes seen "
            f"in {watch.samples} samples, {feeder.retried} appends retried, {records} records "
            f"on ledger.out, {time.monotonic() - began:.0f} s"
        )
