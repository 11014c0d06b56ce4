"""The worker loop, in-process on the embedded stack: order, exactly-once, outbox, DLQ."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from pydantic import BaseModel

from loglane import Event, RequestStatus, Retry, Service, Transaction
from loglane.commands import command_message
from loglane.envelope import output_event_id, read_envelope
from loglane.errors import StaleBatchError
from loglane.logs.embedded import EmbeddedLog
from loglane.records import Message, Position, TopicPartition
from loglane.stores.base import Batch, StoreTransaction
from loglane.stores.sqlite import SQLiteStore
from loglane.testing import LandscapeTest
from loglane.worker import Worker
from tests.apps.ledger import Deposit, accounts, assert_folded, audit, deposits, ledger, tallies
from tests.conftest import eventually


@pytest.fixture
def test_landscape() -> Iterator[LandscapeTest]:
    with LandscapeTest(ledger, audit, batch_size=50) as landscape:
        yield landscape


def assert_landscape_folded(
    landscape: LandscapeTest, accounts_count: int, per_account: int
) -> None:
    assert_folded(
        landscape.view(accounts).get, landscape.view(tallies).get, accounts_count, per_account
    )


def test_a_command_is_materialized_and_its_event_emitted(test_landscape: LandscapeTest) -> None:
    request_id = test_landscape.send(Deposit(account="a", seq=1, amount=5))
    test_landscape.run_until_quiet()
    assert test_landscape.view(accounts).get("a") == ledger_account("a", balance=5, seq=1)
    outcome = test_landscape.outcome(request_id)
    assert outcome is not None
    assert outcome.status is RequestStatus.DONE
    (event,) = test_landscape.events("ledger")
    assert outcome.event_ids == (event.id,)
    assert event.id == output_event_id("ledger", request_id, 0)
    assert (event.type, event.source, event.correlation_id, event.causation_id) == (
        "Deposited",
        "ledger",
        request_id,
        request_id,
    )


def ledger_account(name: str, *, balance: int, seq: int) -> BaseModel:
    return accounts.model(account=name, balance=balance, last_seq=seq, applied=seq)


def test_reads_in_a_handler_see_the_batchs_own_earlier_writes(
    test_landscape: LandscapeTest,
) -> None:
    for command in deposits(accounts_count=3, per_account=10):
        test_landscape.send(command)
    test_landscape.run_until_quiet()
    assert_landscape_folded(test_landscape, 3, 10)


def test_per_key_order_holds_across_a_restart(tmp_path: Path) -> None:
    urls = {
        "log_url": f"embedded:///{tmp_path}/log.db",
        "db_url": f"sqlite:///{tmp_path}/{{service}}.db",
    }
    commands = deposits(accounts_count=10, per_account=30)
    with LandscapeTest(ledger, audit, batch_size=7, **urls) as first:
        for command in commands[:150]:
            first.send(command)
        for worker in first.workers:
            worker.run_once(timeout=0.5)
    with LandscapeTest(ledger, audit, batch_size=7, **urls) as second:
        for command in commands[150:]:
            second.send(command)
        second.run_until_quiet()
        assert_landscape_folded(second, 10, 30)


class CrashOnPublish(EmbeddedLog):
    """A log whose next append of output events dies, as a process killed right then would."""

    armed = True

    def append(self, messages: Sequence[Message]) -> list[Position]:
        if self.armed and any(m.topic == "ledger.out" for m in messages):
            CrashOnPublish.armed = False
            raise SystemExit("killed between commit and publish")
        return super().append(messages)


def test_events_committed_but_not_published_are_published_after_a_crash(tmp_path: Path) -> None:
    log = CrashOnPublish(tmp_path / "log.db", session_timeout=0.5, heartbeat_interval=0.05)
    store = SQLiteStore(tmp_path / "ledger.db")
    worker = Worker(ledger, log, store)
    worker.start()
    message = command_message(ledger, Deposit(account="a", seq=1, amount=3))[1]
    request_id = read_envelope_of(message)
    log.append([message])
    with pytest.raises(SystemExit):
        worker.run_once(timeout=5)
    assert store.positions("ledger") != {}, "the batch was committed before the crash"
    assert sum(o.end for o in log.offsets("ledger.out").values()) == 0
    assert store.outbox_backlog("ledger") != {}

    # the crashed member never leaves the group; its partitions come free when its lease ends
    new_log = EmbeddedLog(tmp_path / "log.db", session_timeout=0.5, heartbeat_interval=0.05)
    restarted = Worker(ledger, new_log, SQLiteStore(tmp_path / "ledger.db"))
    restarted.start()
    eventually(
        lambda: (
            restarted.run_once(timeout=0.05) >= 0 and restarted.store.outbox_backlog("ledger") == {}
        ),
        message="the outbox was republished",
    )
    out = [
        read_envelope(r)
        for p in range(ledger.partitions)
        for r in log.read(TopicPartition("ledger.out", p), 0, 100)
    ]
    assert [e.id for e in out] == [output_event_id("ledger", request_id, 0)]
    assert restarted.store.outbox_backlog("ledger") == {}
    assert restarted.store.get(accounts, "a") == ledger_account("a", balance=3, seq=1)
    restarted.close()
    worker.close()


def test_one_poll_of_several_partitions_commits_in_one_store_transaction(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    store = SQLiteStore(tmp_path / "ledger.db")
    worker = Worker(ledger, log, store)
    worker.start()
    log.append([command_message(ledger, d)[1] for d in deposits(accounts_count=8, per_account=3)])
    fenced: list[list[TopicPartition]] = []
    real_transaction = store.transaction

    def counting(
        service: str, fences: Mapping[TopicPartition, int | None]
    ) -> AbstractContextManager[StoreTransaction]:
        fenced.append(sorted(fences))
        return real_transaction(service, fences)

    store.transaction = counting  # type: ignore[method-assign]
    polls = 0
    while worker.handled < 24:
        polls += worker.run_once(timeout=5) > 0
    assert len(fenced) == polls, "one transaction a poll"
    assert len(fenced[0]) > 1, "the first poll's partitions were committed together"
    for a in range(8):
        assert store.get(accounts, f"acct-{a}") == ledger_account(f"acct-{a}", balance=6, seq=3)
    worker.close()


def published_and_in_outbox(log: EmbeddedLog, store: SQLiteStore) -> tuple[int, int]:
    """How many events the ledger has published, and how many rows its outbox holds."""
    published = sum(o.end for o in log.offsets("ledger.out").values())
    return published, sum(store.outbox_backlog("ledger").values())


def test_published_rows_leave_the_outbox_with_the_next_commit_or_when_idle(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    store = SQLiteStore(tmp_path / "ledger.db")
    worker = Worker(ledger, log, store)
    worker.start()
    log.append([command_message(ledger, d)[1] for d in deposits(accounts_count=1, per_account=5)])
    assert worker.run_once(timeout=5) == 5
    assert published_and_in_outbox(log, store) == (5, 5), "kept until the log acknowledges"
    more = [Deposit(account="acct-0", seq=seq, amount=1) for seq in range(6, 9)]
    log.append([command_message(ledger, d)[1] for d in more])
    assert worker.run_once(timeout=5) == 3
    assert published_and_in_outbox(log, store) == (8, 3), "the commit forgot the five landed"
    assert worker.run_once(timeout=0.05) == 0
    assert published_and_in_outbox(log, store) == (8, 0), "an idle pass forgets the last three"
    worker.close()


def test_rows_published_by_passes_sending_ahead_leave_the_outbox_with_a_later_commit(
    tmp_path: Path,
) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    store = SQLiteStore(tmp_path / "ledger.db")
    worker = Worker(ledger, log, store, batch_size=3)
    worker.start()
    log.append([command_message(ledger, d)[1] for d in deposits(accounts_count=1, per_account=15)])
    # A pass sends its commit, then publishes what the last pass committed; a commit forgets
    # the rows whose publish had landed by the time it was sent.
    after_each_pass = [
        (3, 0, 3),
        (3, 3, 6),
        (3, 6, 9),
        (3, 9, 9),  # the commit sent forgot the first three
        (3, 12, 9),
        (0, 15, 9),  # nothing polled: the last commit is published
        (0, 15, 0),  # idle: all that landed is forgotten
    ]
    for taken, out, kept in after_each_pass:
        assert worker.run_once(timeout=0.5, send_ahead=True) == taken
        assert published_and_in_outbox(log, store) == (out, kept)
    worker.close()


def test_a_replaying_worker_rebuilds_views_and_nothing_else(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    live = Worker(ledger, log, SQLiteStore(tmp_path / "ledger.db"))
    live.start()
    posted = [command_message(ledger, d) for d in deposits(accounts_count=2, per_account=3)]
    log.append([message for _, message in posted])
    log.append([Message("ledger.in", b"acct-0", b"{}", ())])  # no envelope: a dead letter
    while live.handled < 7:
        live.run_once(timeout=5)
    live.run_once(timeout=0.05)
    live.close()
    published = {
        t: sum(o.end for o in log.offsets(t).values()) for t in ("ledger.out", "ledger.dlq")
    }
    assert published == {"ledger.out": 6, "ledger.dlq": 1}

    shadow = SQLiteStore(tmp_path / "shadow.db")
    replaying = Worker(ledger, log, shadow, group="ledger-rebuild", replay=True)
    replaying.start()
    while replaying.handled < 7:
        replaying.run_once(timeout=5)
    replaying.close()
    for a in range(2):
        assert shadow.get(accounts, f"acct-{a}") == ledger_account(f"acct-{a}", balance=6, seq=3)
    assert {t: sum(o.end for o in log.offsets(t).values()) for t in published} == published
    assert shadow.outbox_backlog("ledger") == {}
    assert shadow.requests("ledger", [request_id for request_id, _ in posted]) == {}
    assert log.committed("ledger", "ledger.in") != {}, "the live group's offsets stay its own"


def read_envelope_of(message: Message) -> str:
    return dict(message.headers)["ce_id"].decode()


def test_a_republished_duplicate_is_dropped_by_the_consumer(test_landscape: LandscapeTest) -> None:
    test_landscape.send(Deposit(account="a", seq=1, amount=5))
    test_landscape.run_until_quiet()
    (record,) = test_landscape.records("ledger.out")
    test_landscape.log.append([Message(record.topic, record.key, record.value, record.headers)])
    test_landscape.run_until_quiet()
    assert len(test_landscape.records("ledger.out")) == 2
    tally = test_landscape.view(tallies).get("a")
    assert tally is not None
    assert tally.events == 1


def heir_commits_first(worker: Worker, heir: SQLiteStore, *, position: int) -> None:
    """Before the worker's next store transaction starts, the partitions' new owner (`heir`)
    commits them up to `position`."""
    real_transaction = worker.store.transaction

    def transaction(
        service: str, fences: Mapping[TopicPartition, int | None]
    ) -> AbstractContextManager[StoreTransaction]:
        worker.store.transaction = real_transaction  # type: ignore[method-assign]
        for source, expected in fences.items():
            heir.commit(
                Batch(service=service, source=source, expected_position=expected, position=position)
            )
        return real_transaction(service, fences)

    worker.store.transaction = transaction  # type: ignore[method-assign]


def test_a_batch_that_lost_its_partition_commits_nothing(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    zombie = Worker(ledger, log, SQLiteStore(tmp_path / "ledger.db"))
    heir = SQLiteStore(tmp_path / "ledger.db")
    zombie.start()
    log.append([command_message(ledger, d)[1] for d in deposits(accounts_count=1, per_account=5)])
    heir_commits_first(zombie, heir, position=5)  # while the zombie's batch is in flight
    assert zombie.run_once(timeout=5) == 5
    assert zombie.handled == 0, "the zombie's batch was fenced off"
    assert heir.get(accounts, "acct-0") is None
    assert sum(o.end for o in log.offsets("ledger.out").values()) == 0
    heir.close()
    zombie.close()


def test_a_pass_that_finds_its_partition_moved_publishes_the_last_commit_once(
    tmp_path: Path,
) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    worker = Worker(ledger, log, SQLiteStore(tmp_path / "ledger.db"), batch_size=5)
    heir = SQLiteStore(tmp_path / "ledger.db")
    worker.start()
    log.append([command_message(ledger, d)[1] for d in deposits(accounts_count=1, per_account=10)])
    assert worker.run_once(timeout=5, send_ahead=True) == 5  # committed; published next pass
    heir_commits_first(worker, heir, position=10)
    worker.run_once(timeout=5, send_ahead=True)  # polls 5-9, finds them taken: resumes at 10
    worker.close()
    outputs = [
        read_envelope(record).id
        for p in range(ledger.partitions)
        for record in log.read(TopicPartition("ledger.out", p), 0, 100)
    ]
    assert len(outputs) == 5, "the first pass's events went out once"
    assert len(set(outputs)) == 5
    heir.close()


def test_a_stale_store_commit_is_refused_and_leaves_the_batch_unapplied(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ledger.db")
    store.prepare("ledger", [accounts])
    source = TopicPartition("ledger.in", 0)
    store.commit(Batch(service="ledger", source=source, expected_position=None, position=10))
    with pytest.raises(StaleBatchError, match="another worker owns the partition"):
        store.commit(
            Batch(
                service="ledger",
                source=source,
                expected_position=5,
                position=12,
                writes={accounts: {"x": accounts.image(accounts.model(account="x"))}},
            )
        )
    assert store.get(accounts, "x") is None


flaky = Service(
    "flaky", partitions=1, retry=Retry(attempts=3, backoff_seconds=0.001), park_keys=False
)


class Work(Event):
    item: str
    fail_times: int = 0


class Done(BaseModel):
    item: str
    attempts: int


done = flaky.view("done", Done, key="item")
attempts: dict[str, int] = {}


@flaky.handles(Work, key="item")
def work(command: Work, tx: Transaction) -> None:
    attempts[command.item] = attempts.get(command.item, 0) + 1
    tx[done].put(Done(item=command.item, attempts=attempts[command.item]))
    if attempts[command.item] <= command.fail_times:
        raise RuntimeError(f"attempt {attempts[command.item]} failed")


def test_a_failing_handler_is_retried_and_its_failed_attempts_leave_nothing() -> None:
    with LandscapeTest(flaky) as landscape:
        request_id = landscape.send(Work(item="w1", fail_times=2))
        landscape.run_until_quiet()
        assert landscape.view(done).get("w1") == Done(item="w1", attempts=3)
        outcome = landscape.outcome(request_id)
        assert outcome is not None
        assert outcome.status is RequestStatus.DONE
        assert landscape.dead_letters("flaky") == []


def cloudevent_headers(event_id: str, event_type: str) -> tuple[tuple[str, bytes], ...]:
    return (
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", b"test"),
        ("ce_type", event_type.encode()),
    )


def test_bad_input_goes_to_the_dlq_and_the_partition_moves_on() -> None:
    with LandscapeTest(flaky) as landscape:
        failing = landscape.send(Work(item="w2", fail_times=99))
        unknown = Message("flaky.in", b"k", b"{}", cloudevent_headers("e1", "Nope"))
        invalid = Message("flaky.in", b"k", b'{"item": 5', cloudevent_headers("e2", "Work"))
        headless = Message("flaky.in", b"k", b'{"item": "x"}', ())
        landscape.log.append([unknown, invalid, headless])
        after = landscape.send(Work(item="w3"))
        landscape.run_until_quiet()
        letters = landscape.dead_letters("flaky")
        errors = [dict(r.headers)["loglane_error"].decode() for r in letters]
        assert len(letters) == 4
        assert errors[0].startswith("handler failed 3 times: RuntimeError")
        assert errors[1].startswith("unknown command type 'Nope'; accepted: Work")
        assert errors[2].startswith("invalid Work:")
        assert "no ce_id, ce_source, ce_type header" in errors[3]
        assert [r.value for r in letters[1:]] == [unknown.value, invalid.value, headless.value]
        assert dict(letters[0].headers)["loglane_source"].startswith(b"flaky.in:0:")
        failed = landscape.outcome(failing)
        assert failed is not None
        assert failed.status is RequestStatus.FAILED
        # the user's own frames, to act on: where in the handler it failed, and why
        assert failed.detail == errors[0]
        assert 'test_worker.py", line' in errors[0]
        assert 'raise RuntimeError(f"attempt' in errors[0]
        assert "loglane/worker.py" not in errors[0]
        assert landscape.view(done).get("w2") is None
        finished = landscape.outcome(after)
        assert finished is not None
        assert finished.status is RequestStatus.DONE


shop_like = Service("registry", partitions=2)


class Register(Event):
    name: str


class Entry(BaseModel):
    name: str


entries = shop_like.view("entries", Entry, key="name")


@shop_like.handles(Register, key="name")
async def register(command: Register, tx: Transaction) -> None:
    await asyncio.sleep(0)
    if tx[entries].get(command.name) is not None:
        tx.reject(f"{command.name} is taken")
        return
    tx[entries].put(Entry(name=command.name))


def test_async_handlers_run_and_a_rejection_is_correlated_with_its_request() -> None:
    with LandscapeTest(shop_like) as landscape:
        first = landscape.send(Register(name="ada"))
        second = landscape.send(Register(name="ada"))
        landscape.run_until_quiet()
        accepted, rejected = landscape.outcome(first), landscape.outcome(second)
        assert accepted is not None
        assert rejected is not None
        assert (accepted.status, rejected.status) == (RequestStatus.DONE, RequestStatus.REJECTED)
        assert rejected.detail == "ada is taken"
        (event,) = landscape.events("registry")
        assert (event.type, event.correlation_id) == ("loglane.Rejected", second)
        assert rejected.event_ids == (event.id,)


class Stock(BaseModel):
    item: str
    times: int


shop_keeper = Service("keeper", partitions=1)
stock = shop_keeper.view("stock", Stock, key="item")


class Restock(Event):
    item: str


@shop_keeper.handles(Restock, key="item")
def restock(command: Restock, tx: Transaction) -> None:
    if command.item == "forbidden":
        tx.reject("not sold here")
        tx[stock].put(Stock(item=command.item, times=99))  # never reached: reject ends it
    tx[stock].put(Stock(item=command.item, times=1))


def test_reject_ends_the_handler_and_records_the_rejection() -> None:
    with LandscapeTest(shop_keeper) as landscape:
        refused = landscape.send(Restock(item="forbidden"))
        landscape.send(Restock(item="apples"))
        landscape.run_until_quiet()
        outcome = landscape.outcome(refused)
        assert outcome is not None
        assert (outcome.status, outcome.detail) == (RequestStatus.REJECTED, "not sold here")
        assert landscape.view(stock).get("forbidden") is None
        assert landscape.view(stock).get("apples") == Stock(item="apples", times=1)
        assert landscape.dead_letters("keeper") == []


def test_a_refused_record_that_names_its_request_fails_that_request() -> None:
    with LandscapeTest(flaky) as landscape:
        headers = (*cloudevent_headers("r-1", "Work"), ("content-type", b"text/plain"))
        landscape.log.append([Message("flaky.in", b"k", b"plain words", headers)])
        landscape.run_until_quiet()
        (letter,) = landscape.dead_letters("flaky")
        assert b"is not JSON" in dict(letter.headers)["loglane_error"]
        outcome = landscape.stores["flaky"].request("flaky", "r-1", source="test")
        assert outcome is not None
        assert outcome.status is RequestStatus.FAILED
        assert outcome.detail is not None
        assert "is not JSON" in outcome.detail
