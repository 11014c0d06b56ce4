"""The exactly-once promise at its edges: refused writes, shared rows, sources, late copies, keys.

Each test runs on the embedded log with its views in SQLite and, marked `postgres`, in
PostgreSQL: what the promise says must hold on every store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from loglane import Event, RequestStatus, Retry, Service, Transaction
from loglane.commands import command_message
from loglane.dlq import ERROR_HEADER
from loglane.envelope import read_envelope
from loglane.errors import BackendUnavailableError, BatchConflictError, PositionAheadOfLogError
from loglane.logs.base import Consumer, Publishing, RebalanceListener
from loglane.logs.embedded import EmbeddedLog
from loglane.partitioner import partition_for
from loglane.records import Message, Record, TopicPartition
from loglane.stores._postgres_batch import row_lock
from loglane.stores.base import Batch, PendingCommit, StoreTransaction
from loglane.stores.postgres import PostgresStore
from loglane.stores.sqlite import SQLiteStore
from loglane.testing import LandscapeTest
from loglane.transaction import Emitter, UnitOfWork
from loglane.urls import open_log, open_store
from loglane.views import Key, View
from loglane.worker import Worker, ensure_topics
from tests.apps.ledger import Deposit, Deposited, audit, ledger, tallies
from tests.postgres import schemas, with_schema

tills = Service("tills", partitions=4, retry=Retry(attempts=3, backoff_seconds=0.001))


class Sale(Event):
    till: str
    region: str
    amount: int
    note: str = ""
    fail_once: bool = False


class Total(BaseModel):
    region: str
    sales: int = 0
    amount: int = 0
    notes: list[str] = []


totals = tills.view("totals", Total, key="region")
failed_once: set[str] = set()


@tills.handles(Sale, key="till")
def sell(sale: Sale, tx: Transaction) -> None:
    total = tx[totals].get(sale.region) or Total(region=sale.region)
    total.sales += 1  # changed in place: a retry must not see this attempt's change
    total.amount += sale.amount
    total.notes.append(sale.note)
    if sale.fail_once and tx.event_id not in failed_once:
        failed_once.add(tx.event_id)
        raise RuntimeError("the till jammed")
    if sale.note == "bad sql":
        tx.execute("INSERT INTO no_such_table VALUES (1)")
    if sale.note == "vetoed at commit":  # a deferred constraint: checked at COMMIT
        tx.execute("INSERT INTO vetoes VALUES (1)")
    tx[totals].put(total)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The embedded log with the views in SQLite, or in PostgreSQL."""
    log_url = f"embedded:///{tmp_path}/log.db?session_timeout=2&heartbeat_interval=0.05"
    if request.param == "sqlite":
        yield {"log_url": log_url, "db_url": f"sqlite:///{tmp_path}/{{service}}.db"}
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    with schemas(postgres_url) as prefix:
        yield {"log_url": log_url, "db_url": with_schema(postgres_url, prefix + "{service}")}


def sale(n: int, **fields: object) -> Sale:
    return Sale(till=f"till-{n % 10}", region="eu", amount=n, note=str(n), **fields)  # type: ignore[arg-type]


def test_an_event_whose_writes_the_store_refuses_is_dead_lettered_and_the_rest_applied(
    urls: dict[str, str],
) -> None:
    sales = [sale(n) for n in range(20)]
    sales[7] = sale(7).model_copy(update={"note": "bad sql"})
    with LandscapeTest(tills, batch_size=100, **urls) as test:
        request_ids = [test.send(s) for s in sales]
        test.run_until_quiet()
        total = test.view(totals).get("eu")
        assert total is not None
        # sale 17, of the same till, waits behind the dead letter (loglane.parking)
        assert (total.sales, total.amount) == (18, sum(range(20)) - 7 - 17)
        (letter,) = test.dead_letters("tills")
        assert read_envelope(letter).id == request_ids[7]
        assert b"the store refused its changes" in dict(letter.headers)[ERROR_HEADER]
        outcome = test.outcome(request_ids[7])
        assert outcome is not None
        assert outcome.status is RequestStatus.FAILED
        more = test.send(sale(20))
        test.run_until_quiet()
        assert test.outcome(more) is not None, "the partition moved on"


@pytest.mark.postgres
def test_a_write_refused_only_at_commit_is_dead_lettered_when_the_loop_confirms_it(
    postgres_url: str, tmp_path: Path
) -> None:
    """`Worker.run` sends each commit ahead, and confirms it in its next pass. A constraint
    checked at COMMIT fails there; the batch runs again, halved down to the culprit."""
    sales = [sale(n) for n in range(20)]
    sales[7] = sale(7).model_copy(update={"note": "vetoed at commit"})
    log_url = f"embedded:///{tmp_path}/log.db"
    with schemas(postgres_url) as prefix:
        db_url = with_schema(postgres_url, prefix + "{service}")
        store = open_store(db_url, "tills")
        store.prepare("tills", list(tills.views.values()))
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            table = f'"{prefix}tills".vetoes'
            conn.execute(f"CREATE TABLE {table} (n INTEGER UNIQUE DEFERRABLE INITIALLY DEFERRED)")
            conn.execute(f"INSERT INTO {table} VALUES (1)")
        log = open_log(log_url)
        ensure_topics(log, [tills])
        posted = [command_message(tills, s) for s in sales]
        log.append([message for _, message in posted])
        worker = Worker(tills, open_log(log_url), open_store(db_url, "tills"))
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,))
        thread.start()
        try:
            wait_while_progressing(lambda: sum(store.positions("tills").values()), len(sales))
            total = store.get(totals, "eu")
            assert total is not None
            # sale 17, of the same till, waits behind the dead letter (loglane.parking)
            assert (total.sales, total.amount) == (18, sum(range(20)) - 7 - 17)
            failed = store.request("tills", posted[7][0])
            assert failed is not None
            assert failed.status is RequestStatus.FAILED
            assert "vetoes_n_key" in (failed.detail or "")
        finally:
            stop.set()
            thread.join(30)
            worker.store.close()
            worker.log.close()
            store.close()
            log.close()


@pytest.mark.postgres
def test_a_nul_character_postgresql_cannot_hold_is_dead_lettered_not_wedged(
    postgres_url: str, tmp_path: Path
) -> None:
    with schemas(postgres_url) as prefix:
        db_url = with_schema(postgres_url, prefix + "{service}")
        with LandscapeTest(
            tills, batch_size=100, db_url=db_url, log_url=f"embedded:///{tmp_path}/l.db"
        ) as test:
            good = [test.send(sale(n)) for n in range(5)]
            poison = test.send(sale(5).model_copy(update={"note": "Bo\u0000b"}))
            later = test.send(sale(6))
            test.run_until_quiet()
            assert [test.outcome(r).status for r in [*good, later]] == ["done"] * 6  # type: ignore[union-attr]
            failed = test.outcome(poison)
            assert failed is not None
            assert failed.status is RequestStatus.FAILED
            assert len(test.dead_letters("tills")) == 1
            total = test.view(totals).get("eu")
            assert total is not None
            assert total.sales == 6


def test_a_retried_handler_starts_from_the_row_as_it_was(urls: dict[str, str]) -> None:
    with LandscapeTest(tills, batch_size=100, **urls) as test:
        test.send(sale(1))
        test.send(sale(11, fail_once=True))  # the same till: the same partition, in order
        test.run_until_quiet()
        assert test.view(totals).get("eu") == Total(
            region="eu", sales=2, amount=12, notes=["1", "11"]
        )


def test_workers_of_different_partitions_adding_to_one_row_lose_no_update(
    urls: dict[str, str],
) -> None:
    count = 1200
    log = open_log(urls["log_url"])
    ensure_topics(log, [tills])
    log.append([command_message(tills, sale(n))[1] for n in range(count)])
    workers = [
        Worker(tills, open_log(urls["log_url"]), open_store(urls["db_url"], "tills"), batch_size=25)
        for _ in range(2)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=worker.run, args=(stop,)) for worker in workers]
    for thread in threads:
        thread.start()
    store = open_store(urls["db_url"], "tills")
    try:
        wait_while_progressing(lambda: sum(store.positions("tills").values()), count)
        assert all(worker.handled > 0 for worker in workers), "both workers took partitions"
        total = store.get(totals, "eu")
        assert total is not None
        assert (total.sales, total.amount) == (count, sum(range(count)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for worker in workers:
            worker.store.close()
            worker.log.close()
        store.close()
        log.close()


def wait_while_progressing(measure: object, target: int, stall: float = 120.0) -> None:
    """Wait until `measure()` reaches `target`; fail only if it stops moving for `stall` s."""
    last, since = -1, time.monotonic()
    while (value := measure()) < target:  # type: ignore[operator]
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since > stall:
            raise AssertionError(f"stuck at {value} of {target} for {stall}s")
        time.sleep(0.05)


def test_commands_of_two_sources_sharing_an_id_are_two_commands(urls: dict[str, str]) -> None:
    with LandscapeTest(tills, **urls) as test:
        _, ours = command_message(tills, sale(1), request_id="r-1")
        _, theirs = command_message(tills, sale(2), request_id="r-1", source="billing")
        test.log.append([ours, theirs])
        test.run_until_quiet()
        total = test.view(totals).get("eu")
        assert total is not None
        assert (total.sales, total.amount) == (2, 3)
        store = test.stores["tills"]
        assert store.request("tills", "r-1") is not None
        assert store.request("tills", "r-1", source="billing") is not None


def test_a_copy_republished_long_after_its_original_is_still_dropped(tmp_path: Path) -> None:
    """Far beyond the window of applied ids: the origin watermark recognises it."""
    with LandscapeTest(
        ledger,
        log_url=f"embedded:///{tmp_path}/log.db",
        db_url=f"sqlite:///{tmp_path}/{{service}}.db",
    ) as test:
        for seq in range(1, 41):
            test.send(Deposit(account="a", seq=seq, amount=1))
        test.run_until_quiet()
        first = min(test.records("ledger.out"), key=lambda r: r.offset)
        log = EmbeddedLog(tmp_path / "log.db")
        ensure_topics(log, [audit])
        store = open_store(f"sqlite:///{tmp_path}/{{service}}.db", "audit")
        follower = Worker(audit, log, store, dedupe_window=5)
        follower.start()
        wait_while_progressing(lambda: drained(follower), 40)
        log.append([Message(first.topic, first.key, first.value, first.headers)])
        wait_while_progressing(lambda: drained(follower), 41)
        tally = store.get(tallies, "a")
        assert tally is not None
        assert tally.events == 40
        follower.close()
        store.close()
        log.close()


def drained(worker: Worker) -> int:
    worker.run_once(timeout=0.05)
    return sum(worker.store.positions(worker.service.name).values())


def test_a_command_whose_record_key_is_not_its_declared_key_is_dead_lettered(
    urls: dict[str, str],
) -> None:
    with LandscapeTest(tills, **urls) as test:
        _, message = command_message(tills, sale(1))
        test.log.append([Message(message.topic, b"till-9", message.value, message.headers)])
        test.log.append([Message(message.topic, None, message.value, message.headers)])
        test.run_until_quiet()
        letters = test.dead_letters("tills")
        assert len(letters) == 2
        assert all(b"is not the command's till" in dict(r.headers)[ERROR_HEADER] for r in letters)
        assert test.view(totals).get("eu") is None


def test_output_events_are_keyed_by_the_handlers_declared_key(urls: dict[str, str]) -> None:
    with LandscapeTest(ledger, **urls) as test:
        test.send(Deposit(account="acct-7", seq=1, amount=5))
        test.run_until_quiet()
        (record,) = test.records("ledger.out")
        assert record.key == b"acct-7"


def run_until_an_error(worker: Worker) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        worker.run_once(timeout=0.05)


def test_a_position_beyond_a_recreated_logs_end_stops_the_worker_with_what_to_do(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path}/{{service}}.db"
    with LandscapeTest(tills, log_url=f"embedded:///{tmp_path}/old.db", db_url=db_url) as test:
        for n in range(8):
            test.send(sale(n))
        test.run_until_quiet()
    log = EmbeddedLog(tmp_path / "new.db")
    ensure_topics(log, [tills])
    worker = Worker(tills, log, open_store(db_url, "tills"))
    worker.start()
    with pytest.raises(PositionAheadOfLogError, match="loglane reset"):
        run_until_an_error(worker)
    worker.close()
    worker.store.close()
    log.close()


def test_a_keyless_event_is_keyed_by_its_id_so_its_copies_share_its_partition() -> None:
    _, message = command_message(ledger, Deposit(account="a", seq=1, amount=1))
    envelope = read_envelope(
        Record(message.topic, 0, 0, message.key, message.value, message.headers, 0)
    )
    tx = Transaction(
        unit=UnitOfWork(NoRows()),
        emitter=Emitter.of("ledger", "ledger.out", "2026-11-27T00:00:00Z"),
        cause=envelope,
        key=None,
        origin="ledger.in/0/0",
    )
    tx.emit(Deposited(account="a", seq=1, balance=1))
    (sent,) = tx.messages
    assert sent.key == tx.event_ids[0].encode()


class NoRows(StoreTransaction):
    def get(self, view: View[Any], key: Key) -> str | None:
        return None

    def write_all(
        self, batches: Sequence[Batch], published: Mapping[TopicPartition, int] | None = None
    ) -> dict[TopicPartition, int]:
        return {}


@pytest.mark.postgres
def test_a_lock_wait_that_times_out_is_an_outage_not_a_failing_handler(
    postgres_url: str, tmp_path: Path
) -> None:
    """A lost lock race must end the batch (it runs again), never retry the handler on a
    transaction PostgreSQL has aborted: that dead-lettered good events."""
    log_url = f"embedded:///{tmp_path}/log.db"
    log = open_log(log_url)
    ensure_topics(log, [tills])
    separator = "&" if "?" in postgres_url else "?"
    with schemas(postgres_url) as prefix:
        store = PostgresStore(
            f"{postgres_url}{separator}options=-c%20lock_timeout%3D300",
            schema=prefix + "{service}",
        )
        worker = Worker(tills, open_log(log_url), store)
        worker.start()
        log.append([command_message(tills, sale(1))[1]])
        wait_while_progressing(lambda: drained(worker), 1)  # it learns what sell reads
        table = store._view_table(totals).name
        with psycopg.connect(postgres_url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (row_lock(table, "eu"),))
            log.append([command_message(tills, sale(11))[1]])
            with pytest.raises(BackendUnavailableError, match="lock timeout"):
                run_until_an_error(worker)
            holder.execute("SELECT pg_advisory_unlock_all()")
        worker._resume(sorted(worker._owned))  # as Worker.run does after an outage
        wait_while_progressing(lambda: drained(worker), 2)
        assert sum(o.end for o in log.offsets(tills.dlq_topic).values()) == 0
        total = store.get(totals, "eu")
        assert total is not None
        assert (total.sales, total.amount) == (2, 12)
        worker.close()
        store.close()
    log.close()


counter = Service("counter", partitions=1)


class Add(Event):
    n: int


class Sum(BaseModel):
    key: str
    count: int = 0
    total: int = 0


sums = counter.view("sums", Sum, key="key")


@counter.handles(Add)
def add(command: Add, tx: Transaction) -> None:
    row = tx[sums].get("all") or Sum(key="all")
    tx[sums].put(row.model_copy(update={"count": row.count + 1, "total": row.total + command.n}))


class CommitLostOnce(SQLiteStore):
    """A store whose next transaction's commit, sent ahead, is lost: rolled back, and
    reported (as a lost lock race, unless `error` says otherwise) when the worker confirms
    it."""

    lose_next = False
    error: Exception = BatchConflictError("lost to another transaction")

    @contextmanager
    def transaction(
        self, service: str, fences: Mapping[TopicPartition, int | None]
    ) -> Iterator[StoreTransaction]:
        if not self.lose_next:
            with super().transaction(service, fences) as tx:
                yield tx
            return
        self.lose_next = False
        with suppress(_RolledBack), super().transaction(service, fences) as tx:
            lost = _LostCommit(self.error)
            tx.send_all = lambda batches, published=None: lost  # type: ignore[method-assign]
            yield tx
            raise _RolledBack


class _RolledBack(Exception):
    pass


class _LostCommit(PendingCommit):
    def __init__(self, error: Exception) -> None:
        super().__init__({})
        self.error = error

    def wait(self) -> dict[TopicPartition, int]:
        raise self.error


def test_records_polled_before_a_partition_is_found_moved_are_not_applied_past_a_gap(
    tmp_path: Path,
) -> None:
    """The worker polls the next records before it confirms the commit it sent ahead. If
    that commit was lost and, run again, finds the partition moved on by another worker,
    the partition is resumed from its stored position: the records polled ahead start
    further on and must come again, not be applied over the gap."""
    log_url = f"embedded:///{tmp_path}/log.db"
    db_url = f"sqlite:///{tmp_path}/{{service}}.db"
    log = open_log(log_url)
    ensure_topics(log, [counter])
    log.append([command_message(counter, Add(n=n))[1] for n in range(10)])
    store = CommitLostOnce(str(tmp_path / "counter.db"))
    worker = Worker(counter, open_log(log_url), store, batch_size=5)
    worker.start()
    other = Worker(counter, open_log(log_url), open_store(db_url, "counter"), group="other")
    other.batch_size = 3
    other.start()
    try:
        store.lose_next = True
        wait_while_progressing(lambda: worker.run_once(0.05, send_ahead=True), 5)  # 0-4, lost
        while sum(other.store.positions("counter").values()) < 3:
            other.run_once(0.05)  # the other worker applies 0-2 meanwhile
        worker.run_once(0.05, send_ahead=True)  # polls 5-9; the lost commit runs again, stale
        wait_while_progressing(lambda: drained(worker), 10)
        total = store.get(sums, "all")
        assert total is not None
        assert (total.count, total.total) == (10, sum(range(10)))
    finally:
        worker.close()
        other.close()
        store.close()
        other.store.close()
        log.close()


pair = Service("pair", partitions=2)


class Tick(Event):
    slot: str
    n: int


class Ticked(Event):
    slot: str
    n: int


slots = pair.view("slots", Sum, key="key")
SECOND = next(s for s in (f"slot-{i}" for i in range(100)) if partition_for(s.encode(), 2) == 1)
"""A slot whose commands go to the second partition of `pair`'s input."""


@pair.handles(Tick, key="slot")
def tick(command: Tick, tx: Transaction) -> None:
    row = tx[slots].get(command.slot) or Sum(key=command.slot)
    tx[slots].put(row.model_copy(update={"count": row.count + 1, "total": row.total + command.n}))
    tx.emit(Ticked(slot=command.slot, n=command.n))


class RevokesAfterFetching(Consumer):
    """A group member that, when told to, serves a revocation inside a poll after it has
    fetched that poll's records, as a Kafka consumer can: librdkafka runs rebalance
    callbacks inside `consume()`, behind messages already taken off its queue. Records of
    the revoked partitions are left out of the poll, as `KafkaConsumer.poll` leaves them."""

    def __init__(self, member: Consumer, listener: RebalanceListener) -> None:
        self.member, self.listener = member, listener
        self.revoke_next: list[TopicPartition] = []
        self.revoked: set[TopicPartition] = set()

    def poll(self, timeout: float, max_records: int) -> list[Record]:
        records = self.member.poll(timeout, max_records)
        if self.revoke_next:
            revoking, self.revoke_next = self.revoke_next, []
            self.listener.on_revoked(revoking)
            self.revoked.update(revoking)
        return [record for record in records if record.topic_partition not in self.revoked]

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.member.seek(partition, offset)

    def commit(self, offsets: Mapping[TopicPartition, int], *, wait: bool = True) -> None:
        mine = {tp: offset for tp, offset in offsets.items() if tp not in self.revoked}
        self.member.commit(mine, wait=wait)

    def assignment(self) -> frozenset[TopicPartition]:
        return self.member.assignment() - self.revoked

    def close(self) -> None:
        self.member.close()


class RevokingLog(EmbeddedLog):
    """The embedded log, whose consumer can serve a revocation after fetching, and whose
    next `publish` can be told to fail: the messages never arrive."""

    member: RevokesAfterFetching
    fail_next_publish = False

    def publish(self, messages: Sequence[Message]) -> Publishing:
        if not self.fail_next_publish:
            return super().publish(messages)
        self.fail_next_publish = False
        return _NeverArrived()

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        spread: bool = False,
    ) -> Consumer:
        member = super().consumer(group, topics, listener, spread=spread)
        self.member = RevokesAfterFetching(member, listener)
        return self.member


class _NeverArrived:
    def wait(self) -> None:
        raise BackendUnavailableError("the log did not acknowledge the messages")


@contextmanager
def worker_of_pair(tmp_path: Path, store: SQLiteStore, ticks: int) -> Iterator[Worker]:
    """A started worker of `pair` on a `RevokingLog` (its `log`), with its views in `store`,
    and `ticks` commands of the second partition's slot waiting."""
    log = RevokingLog(tmp_path / "log.db")
    ensure_topics(log, [pair])
    log.append([command_message(pair, Tick(slot=SECOND, n=n))[1] for n in range(ticks)])
    worker = Worker(pair, log, store, batch_size=5)
    worker.start()
    try:
        yield worker
    finally:
        worker.close()
        store.close()
        log.close()


def revoke_the_first_partition_in_the_next_poll(worker: Worker) -> None:
    assert isinstance(worker.log, RevokingLog)
    worker.log.member.revoke_next = [TopicPartition(pair.input_topic, 0)]


def test_a_lost_commit_confirmed_in_a_revocation_does_not_let_records_apply_past_a_gap(
    tmp_path: Path,
) -> None:
    """As above, but the lost commit is confirmed by a revocation of another partition,
    served inside the poll after the kept partition's next records were fetched. Run again
    in the rebalance callback, the lost batch would find the kept partition moved on and
    seek it back too late for those records; the kept partition resumes from the store
    after the poll instead."""
    store = CommitLostOnce(str(tmp_path / "pair.db"))
    other = Worker(
        pair,
        open_log(f"embedded:///{tmp_path}/log.db"),
        open_store(f"sqlite:///{tmp_path}/{{service}}.db", "pair"),
        group="other",
        batch_size=3,
    )
    kept = TopicPartition(pair.input_topic, 1)
    with worker_of_pair(tmp_path, store, 10) as worker:
        other.start()
        try:
            store.lose_next = True
            wait_while_progressing(lambda: worker.run_once(0.05, send_ahead=True), 5)  # lost
            while other.store.positions("pair").get(kept, 0) < 3:
                other.run_once(0.05)  # the other worker applies 0-2 meanwhile
            revoke_the_first_partition_in_the_next_poll(worker)
            worker.run_once(0.05, send_ahead=True)  # fetches 5-9, then serves the revocation
            wait_while_progressing(lambda: drained(worker), 10)
            row = store.get(slots, SECOND)
            assert row is not None
            assert (row.count, row.total) == (10, sum(range(10)))
        finally:
            other.close()
            other.store.close()
            other.log.close()


def test_a_commit_a_revocation_cannot_confirm_leaves_the_kept_partitions_to_the_store(
    tmp_path: Path,
) -> None:
    """A revocation confirms the commit sent ahead; if the store cannot say whether it
    committed (the connection broke), the partitions the worker keeps resume from their
    stored positions after the poll, and the records the poll fetched past the lost batch
    come again from there instead of being applied past it."""
    store = CommitLostOnce(str(tmp_path / "pair.db"))
    store.error = BackendUnavailableError("the connection to the database broke")
    with worker_of_pair(tmp_path, store, 10) as worker:
        store.lose_next = True
        wait_while_progressing(lambda: worker.run_once(0.05, send_ahead=True), 5)  # 0-4, lost
        revoke_the_first_partition_in_the_next_poll(worker)
        worker.run_once(0.05, send_ahead=True)  # fetches 5-9, then serves the revocation
        wait_while_progressing(lambda: drained(worker), 10)
        row = store.get(slots, SECOND)
        assert row is not None
        assert (row.count, row.total) == (10, sum(range(10)))


def test_outputs_a_revocation_could_not_publish_go_out_from_the_outbox(tmp_path: Path) -> None:
    """A revocation publishes the last pass's output; if the log fails it, the outbox rows
    stay, and the partitions the worker keeps resume and publish them before going on: a
    later pass's published watermark must not pass over them."""
    with worker_of_pair(tmp_path, SQLiteStore(tmp_path / "pair.db"), 15) as worker:
        log = worker.log
        assert isinstance(log, RevokingLog)
        wait_while_progressing(lambda: worker.run_once(0.05, send_ahead=True), 5)  # 0-4 sent
        log.fail_next_publish = True
        worker.run_once(0.05, send_ahead=True)  # 0-4 confirmed, their output never arrives
        revoke_the_first_partition_in_the_next_poll(worker)
        worker.run_once(0.05, send_ahead=True)  # the revocation waits for it, and fails
        wait_while_progressing(lambda: drained(worker), 15)
        worker.close()  # what the last pass published lands
        outputs = {read_envelope(record).id for record in read_all(log, pair.output_topic)}
        assert len(outputs) == 15


def read_all(log: EmbeddedLog, topic: str) -> list[Record]:
    return [
        record
        for partition, offsets in log.offsets(topic).items()
        for record in log.read(TopicPartition(topic, partition), offsets.start, offsets.end)
    ]
