"""Landscapes end to end on the embedded log with their views in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from pydantic import BaseModel

from loglane import Event, RequestStatus, Service, Transaction
from loglane.examples.shop import (
    CreateCustomer,
    Customer,
    Order,
    PlaceOrder,
    customers,
    customers_view,
    orders,
    orders_view,
)
from loglane.testing import LandscapeTest
from tests.apps.ledger import Deposit, accounts, audit, deposits, ledger, tallies
from tests.postgres import schemas, with_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def prefix(postgres_url: str) -> Iterator[str]:
    with schemas(postgres_url) as prefix:
        yield prefix


@pytest.fixture
def shop(postgres_url: str, prefix: str) -> Iterator[LandscapeTest]:
    db_url = with_schema(postgres_url, prefix + "{service}")
    with LandscapeTest(customers, orders, db_url=db_url) as test:
        yield test


def test_a_customer_places_an_order_through_both_services(shop: LandscapeTest) -> None:
    created = shop.send(CreateCustomer(customer_id="c1", name="Ada"))
    shop.run_until_quiet()
    placed = shop.send(PlaceOrder(order_id="o1", customer_id="c1", amount_cents=1200))
    shop.send(PlaceOrder(order_id="o2", customer_id="c1", amount_cents=300))
    shop.run_until_quiet()
    assert shop.view(customers_view).get("c1") == Customer(customer_id="c1", name="Ada")
    assert [o.order_id for o in shop.view(orders_view).all(customer_id="c1")] == ["o1", "o2"]
    assert shop.view(orders_view).get("o1") == Order(
        order_id="o1", customer_id="c1", amount_cents=1200
    )
    for request_id, service in [(created, "customers"), (placed, "orders")]:
        outcome = shop.outcome(request_id, service=service)
        assert outcome is not None
        assert outcome.status is RequestStatus.DONE
        assert outcome.event_ids == tuple(
            e.id for e in shop.events(service) if e.correlation_id == request_id
        )


def test_commands_that_break_the_rules_are_rejected_with_a_reason(shop: LandscapeTest) -> None:
    shop.send(CreateCustomer(customer_id="c1", name="Ada"))
    shop.run_until_quiet()
    twice = shop.send(CreateCustomer(customer_id="c1", name="Bob"))
    stranger = shop.send(PlaceOrder(order_id="o1", customer_id="nobody", amount_cents=5))
    shop.run_until_quiet()
    outcome = shop.outcome(twice)
    assert outcome is not None
    assert (outcome.status, outcome.detail) == (RequestStatus.REJECTED, "customer c1 exists")
    outcome = shop.outcome(stranger)
    assert outcome is not None
    assert (outcome.status, outcome.detail) == (RequestStatus.REJECTED, "unknown customer nobody")
    assert shop.view(customers_view).get("c1") == Customer(customer_id="c1", name="Ada")
    assert shop.view(orders_view).get("o1") is None


def test_an_invalid_command_is_dead_lettered_and_its_request_failed(shop: LandscapeTest) -> None:
    request_id = shop.send(PlaceOrder.model_construct(order_id="o1", customer_id="c1"))
    shop.run_until_quiet()
    outcome = shop.outcome(request_id)
    assert outcome is not None
    assert outcome.status is RequestStatus.FAILED
    assert len(shop.dead_letters("orders")) == 1


def test_many_deposits_fold_into_the_views_in_order_and_once(
    postgres_url: str, prefix: str
) -> None:
    db_url = with_schema(postgres_url, prefix + "{service}")
    with LandscapeTest(ledger, audit, db_url=db_url, batch_size=200) as test:
        for command in deposits(accounts_count=50, per_account=20):
            test.send(command)
        test.run_until_quiet()
        for a in range(50):
            account = test.view(accounts).get(f"acct-{a}")
            assert account is not None
            assert (account.balance, account.applied, account.out_of_order) == (210, 20, 0)
            tally = test.view(tallies).get(f"acct-{a}")
            assert tally is not None
            assert (tally.events, tally.out_of_order) == (20, 0)


def test_a_key_postgresql_cannot_hold_is_dead_lettered_once_its_handler_reads_in_batches(
    postgres_url: str, prefix: str
) -> None:
    db_url = with_schema(postgres_url, prefix + "{service}")
    with LandscapeTest(ledger, db_url=db_url, batch_size=100) as test:
        test.send(Deposit(account="acct-0", seq=1, amount=1))
        test.run_until_quiet()  # the handler showed that it reads at its key: batches prefetch
        test.send(Deposit(account="acct-0", seq=2, amount=2))
        test.send(Deposit(account="nul\x00key", seq=1, amount=5))
        test.send(Deposit(account="acct-1", seq=1, amount=3))
        test.run_until_quiet(timeout=30)
        (letter,) = test.dead_letters("ledger")
        assert letter.key == b"nul\x00key"
        balances = {a: test.view(accounts).get(a) for a in ("acct-0", "acct-1")}
        assert {a: row.balance for a, row in balances.items() if row} == {"acct-0": 3, "acct-1": 3}


tally = Service("tally", partitions=2)


class Count(Event):
    word: str


class Word(BaseModel):
    word: str


words = tally.view("words", Word, key="word")


@tally.handles(Count, key="word")
def count(command: Count, tx: Transaction) -> None:
    tx[words].put(Word(word=command.word))
    if command.word == "no":
        tx.execute("INSERT INTO counts VALUES ('no', 1)")
        tx.reject("no is not counted")
        return
    # the service's schema comes first on the search path: its tables need no qualifier
    tx.execute(
        "INSERT INTO counts VALUES (%s, 1) ON CONFLICT (word) DO UPDATE SET n = counts.n + 1",
        (command.word,),
    )


def test_a_handlers_own_sql_commits_with_its_batch_once(postgres_url: str, prefix: str) -> None:
    with LandscapeTest(tally, db_url=with_schema(postgres_url, prefix + "{service}")) as test:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                f'CREATE TABLE "{prefix}tally".counts (word TEXT PRIMARY KEY, n INTEGER NOT NULL)'
            )
        for word in ["a", "b", "a", "no", "a"]:
            test.send(Count(word=word))
        test.run_until_quiet()
        with psycopg.connect(postgres_url) as conn:
            counts = conn.execute(f'SELECT word, n FROM "{prefix}tally".counts ORDER BY word')
            assert counts.fetchall() == [("a", 3), ("b", 1)]
        assert test.view(words).get("b") == Word(word="b")
