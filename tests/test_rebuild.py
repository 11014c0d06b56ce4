"""`loglane rebuild`: a corrupted view rebuilt by replay while commands flow and clients read
it, the rebuild SIGKILLed once and resumed, nothing published or dead-lettered twice; parked
keys, Kafka, postponed swaps, and the stores' swap itself."""

from __future__ import annotations

import random
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import TopicPartition as ConfluentPartition
from pydantic import BaseModel

from loglane.commands import command_message
from loglane.dlq import dead_letters, drop, letter_id
from loglane.envelope import output_event_id
from loglane.examples.shop import KnownCustomer, Order, known_customers, orders_view
from loglane.logs.embedded import EmbeddedLog
from loglane.rebuild import Rebuild, RebuildProgress, RetentionGapError
from loglane.records import Message, TopicPartition
from loglane.stores.base import Batch, Store
from loglane.stores.postgres import PostgresStore
from loglane.stores.sqlite import SQLiteStore
from loglane.testing import LandscapeTest
from loglane.views import View
from loglane.worker import ensure_topics
from tests.apps.ledger import (
    Deposit,
    accounts,
    assert_folded,
    audit,
    deposits,
    landscape,
    ledger,
    tallies,
)
from tests.conftest import eventually, while_progressing
from tests.kafka_broker import Broker, admin, delete_landscape
from tests.postgres import PostgresStack, drop_schemas, schemas
from tests.processes import Stack, WorkerProcess

POISON = 3  # records on ledger.in that are no CloudEvents: dead-lettered once, when first read
CORRUPT = -1_000_000


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The embedded log with the views in SQLite, or in PostgreSQL."""
    if request.param == "sqlite":
        yield Stack(tmp_path)
        return
    url: str = request.getfixturevalue("postgres_url")
    stack = PostgresStack(tmp_path, url=url)
    yield stack
    drop_schemas(url, stack.prefix)


def corrupt_balances(stack: Stack) -> None:
    """What a buggy handler might have done: every account's balance is wrong."""
    if isinstance(stack, PostgresStack):
        with psycopg.connect(stack.url, autocommit=True) as conn:
            conn.execute(
                f'UPDATE "{stack.prefix}ledger".accounts '
                f"SET doc = jsonb_set(doc, '{{balance}}', '{CORRUPT}')"
            )
        return
    with sqlite3.connect(stack.folder / "ledger.db", timeout=60) as db:
        db.execute("UPDATE accounts SET doc = json_set(doc, '$.balance', ?)", (CORRUPT,))


def positions(stack: Stack, service: str) -> int:
    store = stack.store(service)
    try:
        return sum(store.positions(service).values())
    finally:
        store.close()


def shadow_positions(stack: Stack) -> int:
    """How far the rebuild's shadow of `ledger` has read, summed over its partitions."""
    live = stack.store("ledger")
    shadow = live.shadow("ledger")
    try:
        return sum(shadow.positions("ledger").values())
    finally:
        shadow.close()
        live.close()


def shadow_exists(stack: Stack) -> bool:
    if isinstance(stack, PostgresStack):
        with psycopg.connect(stack.url, autocommit=True) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (f"{stack.prefix}ledger__rebuild",)
            ).fetchone()
        return found is not None
    return (stack.folder / "ledger.rebuild.db").exists()


def log_ends(stack: Stack, topic: str) -> int:
    log = stack.log()
    try:
        return sum(offsets.end for offsets in log.offsets(topic).values())
    finally:
        log.close()


def caught_up(stack: Stack) -> bool:
    return positions(stack, "ledger") == log_ends(stack, "ledger.in") and positions(
        stack, "audit"
    ) == log_ends(stack, "ledger.out")


def landscape_progress(stack: Stack) -> tuple[int, int, int]:
    return positions(stack, "ledger"), positions(stack, "audit"), log_ends(stack, "ledger.in")


def append(stack: Stack, batch: Sequence[Deposit]) -> list[str]:
    log = stack.log()
    try:
        messages = [command_message(ledger, deposit) for deposit in batch]
        log.append([message for _, message in messages])
        return [request_id for request_id, _ in messages]
    finally:
        log.close()


def applied_up_to(stack: Stack, target: int) -> bool:
    return positions(stack, "ledger") >= target


@dataclass
class Feeder:
    """Appends deposits in small chunks, each once the live ledger applied the last one:
    commands keep flowing for as long as the deposits last."""

    stack: Stack
    pending: list[Deposit]
    request_ids: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        try:
            for start in range(0, len(self.pending), 100):
                self.request_ids.extend(append(self.stack, self.pending[start : start + 100]))
                target = log_ends(self.stack, "ledger.in")
                while_progressing(
                    partial(applied_up_to, self.stack, target),
                    lambda: positions(self.stack, "ledger"),
                    step=0.01,
                    message="the live ledger applied the chunk",
                )
        except Exception as exc:  # reported by the test
            self.errors.append(repr(exc))
        finally:
            self.done.set()


@dataclass
class Reader:
    """A client reading the live view as fast as it can, one row and one page at a time:
    every read must succeed, and an account's `applied` count must never go back."""

    stack: Stack
    accounts_count: int
    stop: threading.Event = field(default_factory=threading.Event)
    reads: int = 0
    failures: list[str] = field(default_factory=list)
    backwards: list[str] = field(default_factory=list)

    def run(self) -> None:
        store = self.stack.store("ledger")
        rng = random.Random(10)
        seen: dict[str, int] = {}
        while not self.stop.is_set():
            key = f"acct-{rng.randrange(self.accounts_count)}"
            try:
                account = store.get(accounts, key)
                store.query(accounts, after=key, limit=20)
            except Exception as exc:
                self.failures.append(repr(exc))
                continue
            self.reads += 1
            if account is not None:
                if account.applied < seen.get(key, 0):
                    self.backwards.append(f"{key}: {seen[key]} -> {account.applied}")
                seen[key] = account.applied
        store.close()


class _Listener:
    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        pass

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        pass


def rebuild(stack: Stack) -> WorkerProcess:
    return WorkerProcess(
        stack, "rebuild", "tests.apps.ledger", "--service", "ledger", "--yes", name="rebuild"
    )


@pytest.mark.parametrize(
    ("accounts_count", "per_account"),
    [(100, 50), pytest.param(1000, 50, marks=pytest.mark.slow)],
    ids=["5k", "50k"],
)
def test_a_corrupted_view_is_rebuilt_under_load_without_side_effects_and_resumes_after_a_kill(
    stack: Stack, accounts_count: int, per_account: int
) -> None:
    every = deposits(accounts_count, per_account)
    first, middle, last = (
        every[: len(every) * 2 // 5],
        every[len(every) * 2 // 5 : -500],
        every[-500:],
    )
    log = stack.log()
    ensure_topics(log, list(landscape))
    log.append(
        [Message("ledger.in", f"poison-{i}".encode(), b"not an event") for i in range(POISON)]
    )
    log.close()
    request_ids = append(stack, first)
    live = [
        WorkerProcess(stack, "worker", "tests.apps.ledger", "--service", service, name=service)
        for service in ("ledger", "audit")
    ]
    reader = Reader(stack, accounts_count)
    reading = threading.Thread(target=reader.run, daemon=True)
    # the rebuild's consumer group has a member of the test's own: while it holds some of the
    # partitions, the rebuild replays the others and cannot swap, so it is killed mid-way
    member_log = EmbeddedLog(stack.folder / "log.db", session_timeout=1.0, heartbeat_interval=0.1)
    member = member_log.consumer("ledger~rebuild", ["ledger.in"], _Listener())
    processes = [*live]
    try:
        while_progressing(
            lambda: caught_up(stack), lambda: landscape_progress(stack), message="caught up"
        )
        corrupt_balances(stack)
        reading.start()
        eventually(lambda: bool(member.poll(0.05, 10) or member.assignment()), message="joined")
        feeder = Feeder(stack, middle, request_ids)
        threading.Thread(target=feeder.run, daemon=True).start()

        killed = rebuild(stack)
        processes.append(killed)

        def replayed_some() -> bool:
            member.poll(0.01, 10)  # heartbeat, and hand partitions over to the rebuild
            assert killed.process.poll() is None, killed.describe()
            return shadow_positions(stack) > 0

        eventually(replayed_some, timeout=120, message="the rebuild made progress")
        killed.kill()
        resumed_from = shadow_positions(stack)
        assert len(member.assignment()) > 0, "the rebuild could have swapped"
        member.close()

        resumed = rebuild(stack)
        processes.append(resumed)
        while_progressing(
            lambda: resumed.process.poll() is not None,
            lambda: (len(resumed.describe()), landscape_progress(stack)),
            message="the resumed rebuild finished",
        )
        assert resumed.process.returncode == 0, resumed.describe()
        eventually(feeder.done.is_set, timeout=120, message="the feeder finished")
        assert feeder.errors == []
        request_ids.extend(append(stack, last))  # applied on top of the swapped view
        while_progressing(
            lambda: caught_up(stack), lambda: landscape_progress(stack), message="caught up"
        )
    finally:
        reader.stop.set()
        for process in processes:
            if process.process.poll() is None:
                process.stop()
        member_log.close()
    reading.join(timeout=60)

    output = resumed.describe()
    found = re.search(r"(\d[\d,]*) events replayed .* swapped in at (.*)$", output, re.M)
    assert found is not None, output
    handled = int(found[1].replace(",", ""))
    swapped_at = sum(int(offset) for offset in re.findall(r"@(\d+)", found[2]))
    assert handled == swapped_at - resumed_from > 0, "the rebuild resumed from its positions"
    assert swapped_at <= len(first) + len(middle) + POISON
    assert not shadow_exists(stack)

    ledger_store, audit_store = stack.store("ledger"), stack.store("audit")
    try:
        assert_folded(
            partial(ledger_store.get, accounts),
            partial(audit_store.get, tallies),
            accounts_count,
            per_account,
        )
    finally:
        ledger_store.close()
        audit_store.close()
    log = stack.log()
    try:
        published = [
            dict(record.headers)["ce_id"].decode()
            for p, offsets in log.offsets("ledger.out").items()
            for record in log.read(TopicPartition("ledger.out", p), 0, offsets.end)
        ]
        assert len(published) == len(every), "an output event was published twice"
        assert set(published) == {output_event_id("ledger", rid, 0) for rid in request_ids}
        assert log_ends(stack, "ledger.dlq") == POISON
        assert log_ends(stack, "audit.dlq") == 0
    finally:
        log.close()
    assert reader.failures == []
    assert reader.backwards == []
    assert reader.reads > 0


def test_commands_parked_behind_a_dead_letter_are_applied_once_after_a_rebuild(
    tmp_path: Path,
) -> None:
    """The replay parks a key where the live worker did: the commands waiting behind the
    dead letter are not in the rebuilt view, and are applied once when the letter is dropped."""
    log_url, db_url = f"embedded:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/{{service}}.db"
    with LandscapeTest(ledger, log_url=log_url, db_url=db_url) as test:
        _, head = command_message(ledger, Deposit(account="k", seq=1, amount=1))
        test.log.append([replace(head, value=b'{"account": "k", "seq": "one", "amount": 1}')])
        for seq in (2, 3):
            test.send(Deposit(account="k", seq=seq, amount=seq))
        test.send(Deposit(account="other", seq=1, amount=10))
        test.run_until_quiet()
        assert test.view(accounts).get("k") is None  # parked behind the dead letter
        (letter,) = dead_letters(test.log, ledger)

        Rebuild(ledger, test.log, test.stores["ledger"]).run()
        assert test.view(accounts).get("k") is None
        assert test.view(accounts).get("other") is not None

        drop(test.log, test.stores["ledger"], ledger, letter_id(letter))
        test.run_until_quiet()
        account = test.view(accounts).get("k")
        assert account is not None
        assert (account.balance, account.applied) == (5, 2)


@pytest.mark.kafka
def test_on_kafka_a_rebuild_swaps_the_fold_and_refuses_once_records_were_deleted(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    delete_landscape(kafka_broker, [ledger, audit])
    db_url = f"sqlite:///{tmp_path}/{{service}}.db"
    try:
        with LandscapeTest(ledger, log_url=kafka_broker.url(), db_url=db_url) as test:
            for deposit in deposits(10, 5):
                test.send(deposit)
            test.run_until_quiet()
            published = sum(offsets.end for offsets in test.log.offsets("ledger.out").values())
            with sqlite3.connect(tmp_path / "ledger.db") as db:
                db.execute("UPDATE accounts SET doc = json_set(doc, '$.balance', ?)", (CORRUPT,))

            result = Rebuild(ledger, test.log, test.stores["ledger"]).run()
            assert result.handled == 50
            for a in range(10):
                account = test.view(accounts).get(f"acct-{a}")
                assert account is not None
                assert (account.balance, account.applied) == (15, 5)
            after = sum(offsets.end for offsets in test.log.offsets("ledger.out").values())
            assert after == published

            client = admin(kafka_broker)
            deleted = client.delete_records([ConfluentPartition("ledger.in", 0, 1)])
            for future in deleted.values():
                future.result()
            with pytest.raises(RetentionGapError, match=r"ledger\.in\[0\]: needs offset 0"):
                Rebuild(ledger, test.log, test.stores["ledger"]).run()
    finally:
        delete_landscape(kafka_broker, [ledger, audit])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def live_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The live store of the shop's `orders`, in SQLite or in a PostgreSQL schema."""
    if request.param == "sqlite":
        store: Store = SQLiteStore(tmp_path / "orders.db")
        yield store
        store.close()
        return
    url: str = request.getfixturevalue("postgres_url")
    with schemas(url) as prefix:
        store = PostgresStore(url, schema=prefix + "{service}")
        yield store
        store.close()


def write(store: Store, position: int, writes: dict[View[Any], list[BaseModel]]) -> None:
    """Commit one batch of `orders.in[0]` up to `position` with these rows and an outbox row."""
    stored = store.positions("orders").get(TopicPartition("orders.in", 0))
    store.commit(
        Batch(
            service="orders",
            source=TopicPartition("orders.in", 0),
            expected_position=stored,
            position=position,
            writes={
                view: {view.key_of(row): view.image(row) for row in rows}
                for view, rows in writes.items()
            },
            outbox=[Message("orders.out", b"k", b"{}")],
        )
    )


def test_a_swap_replaces_only_the_views_named_with_their_indexes_and_keeps_the_rest_live(
    live_store: Store,
) -> None:
    views = [orders_view, known_customers]
    live_store.prepare("orders", views)
    write(
        live_store,
        7,
        {
            orders_view: [Order(order_id="old", customer_id="ada", amount_cents=1)],
            known_customers: [KnownCustomer(customer_id="ada")],
        },
    )
    shadow = live_store.shadow("orders")
    shadow.prepare("orders", views)
    write(
        shadow,
        5,
        {
            orders_view: [Order(order_id="new", customer_id="bob", amount_cents=2)],
            known_customers: [KnownCustomer(customer_id="bob")],
        },
    )
    with live_store.swap_views("orders", shadow) as swap:
        assert swap.positions == {TopicPartition("orders.in", 0): 7}
        swap.replace([orders_view])
    shadow.discard("orders")

    assert live_store.query(orders_view, where={"customer_id": "bob"}) == [
        Order(order_id="new", customer_id="bob", amount_cents=2)
    ]
    assert live_store.get(orders_view, "old") is None
    assert live_store.query(known_customers) == [KnownCustomer(customer_id="ada")]
    assert live_store.positions("orders") == {TopicPartition("orders.in", 0): 7}
    assert live_store.outbox_backlog("orders") == {TopicPartition("orders.in", 0): 1}
    write(live_store, 8, {orders_view: [Order(order_id="next", customer_id="bob", amount_cents=3)]})
    assert [o.order_id for o in live_store.query(orders_view, where={"customer_id": "bob"})] == [
        "new",
        "next",
    ]
    again = live_store.shadow("orders")  # a new, empty one: the old was deleted
    try:
        assert again.positions("orders") == {}
    finally:
        again.discard("orders")


def test_a_swap_that_fails_changes_nothing(live_store: Store) -> None:
    live_store.prepare("orders", [orders_view])
    write(live_store, 3, {orders_view: [Order(order_id="old", customer_id="ada", amount_cents=1)]})
    shadow = live_store.shadow("orders")
    shadow.prepare("orders", [orders_view])
    write(shadow, 3, {orders_view: [Order(order_id="new", customer_id="bob", amount_cents=2)]})

    def swap_then_fail() -> None:
        with live_store.swap_views("orders", shadow) as swap:
            swap.replace([orders_view])
            raise RuntimeError("the replay failed to reach the live positions")

    with pytest.raises(RuntimeError):
        swap_then_fail()
    shadow.discard("orders")
    assert [o.order_id for o in live_store.query(orders_view)] == ["old"]


def test_a_swap_the_replay_cannot_finish_in_time_is_rolled_back_and_tried_again(
    tmp_path: Path,
) -> None:
    log_url, db_url = f"embedded:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/{{service}}.db"
    with LandscapeTest(ledger, log_url=log_url, db_url=db_url) as test:
        for deposit in deposits(10, 20):
            test.send(deposit)
        test.run_until_quiet()
        corrupt_balances(Stack(tmp_path))
        seen: list[RebuildProgress] = []
        rebuild = Rebuild(
            ledger,
            test.log,
            test.stores["ledger"],
            swap_lag=10_000,  # tried as soon as the replay owns its partitions
            catch_up_timeout=0.0,  # too short to replay anything while the lock is held
            batch_size=20,  # so the first try comes with most of the records still to replay
            on_progress=seen.append,
        )
        result = rebuild.run()
        assert result.postponed >= 1
        assert result.handled == 200
        assert [p.swapping for p in seen].count(True) == 1
        assert seen[-1] == RebuildProgress(replayed=200, live=200, swapping=True)
        for a in range(10):
            account = test.view(accounts).get(f"acct-{a}")
            assert account is not None
            assert account.balance == 210
