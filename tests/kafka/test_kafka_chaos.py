"""Worker processes on Kafka under churn, a broker restart and a paused zombie.

The ledger landscape (tests/apps/ledger.py) runs as real `loglane worker` processes on a
broker of this module's own (it is stopped and started here; its ports follow
LOGLANE_KAFKA_PORT, see tests/kafka_broker.py), every topic with 6 partitions,
views in SQLite (the churn test runs on PostgreSQL too). Each test feeds numbered deposits
per account and checks at the end that every view equals the fold of the input, that per-key
order held, and that every output event id is in `ledger.out` and was applied exactly once
downstream.

Each run feeds LOGLANE_CHAOS_COMMANDS commands (default 50,000; about 20 s a test on two
cores). A smaller count runs quicker, but below about 10,000 the work may be done before the
churn is, and the test then fails waiting for progress rather than passing without it.
Waits last as long as the landscape or its consumer groups keep changing, so a loaded machine
makes them slower, not failed; one fails when nothing has changed for two minutes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from loglane.commands import command_message
from loglane.envelope import output_event_id
from loglane.errors import BackendUnavailableError
from loglane.logs.kafka import KafkaLog
from loglane.records import TopicPartition
from loglane.stores.base import Store
from loglane.stores.postgres import PostgresStore
from loglane.stores.sqlite import SQLiteStore
from loglane.worker import ensure_topics
from tests.apps.ledger import accounts, assert_folded, deposits, landscape, ledger, tallies
from tests.conftest import eventually, while_progressing
from tests.kafka_broker import Broker, ManagedBroker, admin, delete_landscape
from tests.postgres import drop_schemas, unique_prefix, with_schema
from tests.processes import PositionWatch, WorkerProcess, landscape_progress

# The waits below fail when progress stalls. The suite's limit of 300 s a test would cut them
# short on a loaded machine; an hour only stops a hang.
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(3600)]

ACCOUNTS = 500
PER_ACCOUNT = max(1, int(os.environ.get("LOGLANE_CHAOS_COMMANDS", "50000")) // ACCOUNTS)
CHUNK = 500


@dataclass
class KafkaStack:
    """Kafka as the log (6 partitions a topic, quick session timeouts); views in SQLite, or
    in PostgreSQL schemas under a prefix of their own when `postgres_url` is set."""

    folder: Path
    broker: Broker
    postgres_url: str | None = None
    prefix: str = field(default_factory=unique_prefix)

    @property
    def log_url(self) -> str:
        return self.broker.url(
            partitions=6,
            connect_timeout=30,
            **{
                "consumer.session.timeout.ms": 6000,
                "consumer.heartbeat.interval.ms": 500,
            },
        )

    @property
    def db_url(self) -> str:
        if self.postgres_url is None:
            return f"sqlite:///{self.folder}/{{service}}.db"
        return with_schema(self.postgres_url, self.prefix + "{service}")

    def log(self) -> KafkaLog:
        return KafkaLog.from_url(self.log_url)

    def store(self, service: str) -> Store:
        if self.postgres_url is None:
            return SQLiteStore(self.folder / f"{service}.db")
        return PostgresStore(self.postgres_url, schema=self.prefix + "{service}")

    def worker(self, service: str) -> WorkerProcess:
        return WorkerProcess(self, "worker", "tests.apps.ledger", "--service", service)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def chaos_broker() -> Iterator[ManagedBroker]:
    """A broker only this module uses, since its tests stop and start it."""
    managed = ManagedBroker.numbered(1)
    managed.reset()
    managed.start()
    yield managed
    managed.reset()


@pytest.fixture
def stack(
    request: pytest.FixtureRequest, chaos_broker: ManagedBroker, tmp_path: Path
) -> Iterator[KafkaStack]:
    """The stack on SQLite, or on PostgreSQL when a test is parametrized with "postgresql"."""
    chaos_broker.start()
    delete_landscape(chaos_broker.broker(), list(landscape))
    postgres_url = None
    if getattr(request, "param", "sqlite") == "postgresql":
        postgres_url = request.getfixturevalue("postgres_url")
    stack = KafkaStack(tmp_path, chaos_broker.broker(), postgres_url)
    log = stack.log()
    ensure_topics(log, list(landscape))
    log.close()
    yield stack
    if postgres_url is not None:
        drop_schemas(postgres_url, stack.prefix)


class Feeder:
    """Appends the deposits in chunks from a thread, riding out a broker that is away."""

    def __init__(self, stack: KafkaStack) -> None:
        self.stack = stack
        self.request_ids: list[str] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        log = self.stack.log()
        messages = [command_message(ledger, d) for d in deposits(ACCOUNTS, PER_ACCOUNT)]
        for start in range(0, len(messages), CHUNK):
            chunk = messages[start : start + CHUNK]
            while True:
                try:
                    log.append([message for _, message in chunk])
                    break
                except BackendUnavailableError:
                    # a retried chunk may be appended twice: the same request ids, and
                    # the ledger drops the duplicates
                    continue
            self.request_ids.extend(rid for rid, _ in chunk)
        log.close()
        self.done.set()


def stored(stack: KafkaStack, service: str) -> dict[TopicPartition, int]:
    store = stack.store(service)
    try:
        return store.positions(service)
    finally:
        store.close()


def caught_up(stack: KafkaStack, feeder: Feeder) -> bool:
    if not feeder.done.is_set():
        return False
    log = stack.log()
    try:
        for service in landscape:
            positions = stored(stack, service.name)
            store = stack.store(service.name)
            backlog = store.outbox_backlog(service.name)
            store.close()
            if backlog:
                return False
            for topic in service.topics:
                for p, offsets in log.offsets(topic).items():
                    if positions.get(TopicPartition(topic, p), 0) < offsets.end:
                        return False
        return True
    finally:
        log.close()


def wait_for_progress(stack: KafkaStack, *workers: WorkerProcess) -> None:
    """Wait until the ledger commits something new, so what comes next hits it mid-run."""
    before = stored(stack, "ledger")
    eventually(
        lambda: stored(stack, "ledger") != before,
        timeout=120,
        step=0.05,
        message="the ledger made progress",
    )
    for worker in workers:
        assert worker.process.poll() is None, worker.describe()


def members(stack: KafkaStack, group: str) -> list[int]:
    """How many partitions each member of `group` holds, smallest first ([] while unknown)."""
    client = admin(stack.broker)  # held: a collected client never completes its futures
    future = client.describe_consumer_groups([group], request_timeout=10)[group]
    try:
        description = future.result(timeout=30)
    except (KafkaException, TimeoutError):
        return []  # e.g. the group coordinator is still loading
    return sorted(len(m.assignment.topic_partitions) for m in description.members)


def wait_for_members(
    stack: KafkaStack, group: str, holds: Callable[[list[int]], bool], message: str
) -> None:
    """Wait until `holds(members(stack, group))`, for as long as the group keeps changing."""
    seen: list[list[int] | None] = [None]

    def check() -> bool:
        held = seen[0] = members(stack, group)
        return holds(held)

    while_progressing(check, lambda: seen[0], step=0.1, message=message)


def assert_exactly_once(stack: KafkaStack, request_ids: list[str]) -> None:
    """Views equal the fold of the input, in order; every output id there, applied once."""
    assert len(set(request_ids)) == ACCOUNTS * PER_ACCOUNT
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
    log = stack.log()
    try:
        published = {
            dict(record.headers)["ce_id"].decode()
            for p, offsets in log.offsets("ledger.out").items()
            for record in log.read(TopicPartition("ledger.out", p), 0, offsets.end)
        }
        assert published == {output_event_id("ledger", rid, 0) for rid in request_ids}
        for dlq in ("ledger.dlq", "audit.dlq"):
            assert all(o.end == 0 for o in log.offsets(dlq).values()), f"{dlq} is not empty"
    finally:
        log.close()


def finish(stack: KafkaStack, feeder: Feeder, workers: list[WorkerProcess]) -> None:
    """Wait until everything is handled, then stop every worker cleanly."""
    services = [service.name for service in landscape]
    while_progressing(
        lambda: caught_up(stack, feeder),
        lambda: (len(feeder.request_ids), landscape_progress(stack, services)),
        message="the landscape caught up",
    )
    for worker in workers:
        if worker.process.poll() is None:
            assert worker.stop() == 0, worker.describe()


def kill_all(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGCONT)
            worker.kill()


@pytest.mark.parametrize(
    "stack", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_workers_that_join_stop_and_get_killed_mid_run_lose_and_double_nothing(
    stack: KafkaStack,
) -> None:
    first, second, third = (stack.worker("ledger") for _ in range(3))
    workers = [first, second, third, stack.worker("audit")]
    watch = PositionWatch(stack, ["ledger", "audit"])  # type: ignore[arg-type]
    try:
        wait_for_members(
            stack, "ledger", lambda held: held == [2, 2, 2], "three workers own two partitions each"
        )
        watch.start()
        feeder = Feeder(stack).start()
        wait_for_progress(stack, *workers)
        workers.append(joiner := stack.worker("ledger"))
        wait_for_members(stack, "ledger", lambda held: len(held) == 4, "a fourth worker joined")
        wait_for_progress(stack, joiner)
        assert second.stop() == 0, second.describe()
        wait_for_progress(stack, first, third, joiner)
        third.kill()
        wait_for_progress(stack, first, joiner)
        workers.append(stack.worker("ledger"))
        wait_for_progress(stack, first)
        first.kill()
        finish(stack, feeder, workers)
    finally:
        kill_all(workers)
        watch.stop()
    assert watch.samples > 10
    assert watch.violations == []
    assert_exactly_once(stack, feeder.request_ids)


def test_workers_ride_out_a_broker_restart_and_lose_nothing(
    stack: KafkaStack, chaos_broker: ManagedBroker
) -> None:
    workers = [stack.worker("ledger"), stack.worker("ledger"), stack.worker("audit")]
    try:
        feeder = Feeder(stack).start()
        wait_for_progress(stack, *workers)
        chaos_broker.stop()
        chaos_broker.start()
        wait_for_progress(stack, *workers)
        finish(stack, feeder, workers)
    finally:
        kill_all(workers)
    assert_exactly_once(stack, feeder.request_ids)


def wait_until_stopped(pid: int) -> None:
    """Wait until every thread of process `pid` is stopped (state T in /proc)."""

    def stopped() -> bool:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except FileNotFoundError:  # a thread that ended meanwhile
                continue
            if stat.rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                return False
        return True

    eventually(stopped, message=f"process {pid} stopped")


def pause_outside_a_write(worker: WorkerProcess, database: Path) -> None:
    """SIGSTOP `worker` at a moment it holds no write lock on the SQLite `database`. SQLite
    has one writer at a time: a worker paused inside its commit would block every other
    writer of the file until it resumed, a stall this test is not about."""
    while True:
        worker.process.send_signal(signal.SIGSTOP)
        wait_until_stopped(worker.process.pid)  # the signal lands a moment after it is sent
        probe = sqlite3.connect(database, timeout=0.5)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # paused mid-commit: let it finish, then again
            worker.process.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()


def test_a_paused_worker_whose_session_expired_commits_nothing_stale_when_it_resumes(
    stack: KafkaStack,
) -> None:
    zombie, heir = stack.worker("ledger"), stack.worker("ledger")
    workers = [zombie, heir, stack.worker("audit")]
    watch = PositionWatch(stack, ["ledger", "audit"])  # type: ignore[arg-type]
    try:
        wait_for_members(
            stack, "ledger", lambda held: held == [3, 3], "two workers own three partitions each"
        )
        watch.start()
        feeder = Feeder(stack).start()
        wait_for_progress(stack, zombie, heir)
        pause_outside_a_write(zombie, stack.folder / "ledger.db")
        wait_for_members(
            stack,
            "ledger",
            lambda held: held == [6],
            "the heir owns every partition after the zombie's session expired",
        )
        wait_for_progress(stack, heir)
        zombie.process.send_signal(signal.SIGCONT)
        wait_for_members(
            stack,
            "ledger",
            lambda held: held == [3, 3],
            "the resumed worker rejoined and got partitions back",
        )
        finish(stack, feeder, workers)
    finally:
        kill_all(workers)
        watch.stop()
    assert watch.violations == []
    assert_exactly_once(stack, feeder.request_ids)
