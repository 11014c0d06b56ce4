"""The worker on Kafka's real group protocol: fencing a member that outlived its membership,
and status figures taken from Kafka's own watermarks and committed offsets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path

import pytest

from loglane.commands import command_message
from loglane.envelope import output_event_id, read_envelope
from loglane.logs.kafka import KafkaLog
from loglane.records import TopicPartition
from loglane.status import service_status
from loglane.stores.base import StoreTransaction
from loglane.stores.sqlite import SQLiteStore
from loglane.testing import LandscapeTest
from loglane.worker import Worker, ensure_topics
from tests.apps.ledger import accounts, audit, deposits, ledger
from tests.conftest import eventually
from tests.kafka_broker import Broker, delete_landscape

pytestmark = pytest.mark.kafka


@pytest.fixture
def broker(kafka_broker: Broker) -> Iterator[Broker]:
    delete_landscape(kafka_broker, [ledger, audit])
    yield kafka_broker
    delete_landscape(kafka_broker, [ledger, audit])


def run_until(worker: Worker, condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{worker.service.name} did not get there in time"
        worker.run_once(timeout=0.1)


def test_a_worker_whose_batch_outlived_its_group_membership_commits_nothing_stale(
    broker: Broker, tmp_path: Path
) -> None:
    # a member that does not poll for 3 s is put out of the group, as a stalled process is
    url = broker.url(
        **{
            "consumer.session.timeout.ms": 2000,
            "consumer.heartbeat.interval.ms": 300,
            "consumer.max.poll.interval.ms": 3000,
        }
    )
    zombie_log, heir_log = KafkaLog.from_url(url), KafkaLog.from_url(url)
    zombie = Worker(ledger, zombie_log, SQLiteStore(tmp_path / "ledger.db"))
    heir = Worker(ledger, heir_log, SQLiteStore(tmp_path / "ledger.db"))
    zombie.start()
    commands = [command_message(ledger, d) for d in deposits(1, 5)]
    zombie_log.append([message for _, message in commands])
    real_transaction = zombie.store.transaction
    stalled: list[TopicPartition] = []

    def stall_until_the_heir_has_taken_over(
        service: str, fences: Mapping[TopicPartition, int | None]
    ) -> AbstractContextManager[StoreTransaction]:
        # the zombie polled its batch, then stalls before it opens the batch's transaction
        stalled.extend(fences)
        zombie.store.transaction = real_transaction  # type: ignore[method-assign]
        heir.start()
        run_until(heir, lambda: heir.handled == 5)
        return real_transaction(service, fences)

    zombie.store.transaction = stall_until_the_heir_has_taken_over  # type: ignore[method-assign]
    try:
        run_until(zombie, lambda: bool(stalled))
        for _ in range(20):  # the zombie goes on polling and learns that it was put out
            zombie.run_once(timeout=0.1)
        source = stalled[0]
        assert zombie.handled == 0
        account = heir.store.get(accounts, "acct-0")
        assert account is not None
        assert (account.balance, account.applied, account.out_of_order) == (15, 5, 0)
        assert heir.store.positions("ledger")[source] == 5
        assert heir_log.committed("ledger", source.topic) == {source.partition: 5}
        # whoever published the heir's outbox, the events carry the same ids
        published = {
            read_envelope(record).id
            for p, o in heir_log.offsets("ledger.out").items()
            for record in heir_log.read(TopicPartition("ledger.out", p), 0, o.end)
        }
        assert published == {output_event_id("ledger", rid, 0) for rid, _ in commands}
    finally:
        heir.close()
        zombie.close()
        for worker in (heir, zombie):
            worker.store.close()
            worker.log.close()


def test_status_reports_lag_from_kafkas_watermarks_and_committed_offsets(
    broker: Broker, tmp_path: Path
) -> None:
    log_url, db_url = broker.url(), f"sqlite:///{tmp_path}/{{service}}.db"
    with LandscapeTest(ledger, audit, log_url=log_url, db_url=db_url) as landscape:
        for command in deposits(4, 3):
            landscape.send(command)
        landscape.run_until_quiet()
        status = service_status(ledger, landscape.log, landscape.stores["ledger"])
        assert status.lag == 0
        assert sum(p.log_end for p in status.partitions if p.partition.topic == "ledger.in") == 12
        assert all(p.committed == p.stored for p in status.partitions if p.log_end)
        landscape.send(deposits(1, 1)[0])
        behind = service_status(ledger, landscape.log, landscape.stores["ledger"])
        assert behind.lag == 1
        (lagging,) = [p for p in behind.partitions if p.lag]
        assert lagging.partition.topic == "ledger.in"
        ends = landscape.log.offsets("ledger.in")
        assert lagging.log_end == ends[lagging.partition.partition].end


def test_a_running_worker_commits_the_groups_offsets_without_waiting_and_all_once_idle(
    broker: Broker, tmp_path: Path
) -> None:
    log = KafkaLog.from_url(broker.url())
    worker = Worker(ledger, log, SQLiteStore(tmp_path / "ledger.db"))
    ensure_topics(log, [ledger])
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        log.append(
            [message for _, message in map(partial(command_message, ledger), deposits(4, 5))]
        )

        def stored() -> dict[int, int]:
            positions = worker.store.positions("ledger")
            return {tp.partition: o for tp, o in positions.items() if tp.topic == "ledger.in"}

        eventually(lambda: sum(stored().values()) == 20, message="the 20 commands handled")
        # the worker goes idle now; its last offsets reach the group without a stop
        eventually(lambda: log.committed("ledger", "ledger.in") == stored())
    finally:
        stop.set()
        thread.join(timeout=60)
        worker.store.close()
        log.close()
    assert not thread.is_alive()
