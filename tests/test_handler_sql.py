"""A handler's own SQL (`tx.execute`) runs in the batch's transaction, once in effect,
written the same on SQLite and PostgreSQL, on tables the service's migrations create."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from loglane import Event, Service, Transaction
from loglane.migrations import Migrator
from loglane.stores._placeholders import to_sqlite
from loglane.stores.sqlite import SQLiteStore
from loglane.testing import LandscapeTest
from tests.postgres import schemas, with_schema

tally = Service("tally", partitions=1)


class Count(Event):
    word: str


class Word(BaseModel):
    word: str


words = tally.view("words", Word, key="word")


@tally.handles(Count, key="word")
def count(command: Count, tx: Transaction) -> None:
    if command.word == "no":
        tx.execute("INSERT INTO counts VALUES (?, 1)", (command.word,))
        tx.reject("no is not counted")
        return
    tx[words].put(Word(word=command.word))
    tx.execute(
        "INSERT INTO counts VALUES (?, 1) ON CONFLICT (word) DO UPDATE SET n = n + 1",
        (command.word,),
    )


def test_a_handlers_statements_commit_with_its_batch_and_a_rejection_drops_them() -> None:
    with LandscapeTest(tally) as test:
        store = test.stores["tally"]
        assert isinstance(store, SQLiteStore)
        with closing(sqlite3.connect(store.path)) as db, db:
            db.execute("CREATE TABLE counts (word TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        for word in ["a", "b", "a", "no", "a"]:
            test.send(Count(word=word))
        test.run_until_quiet()
        with closing(sqlite3.connect(store.path)) as db:
            counts = dict(db.execute("SELECT word, n FROM counts ORDER BY word"))
        assert counts == {"a": 3, "b": 1}
        assert test.view(words).get("a") == Word(word="a")


@pytest.mark.parametrize(
    ("portable", "sqlite"),
    [
        ("UPDATE t SET n = n + %s WHERE w = %s", "UPDATE t SET n = n + ? WHERE w = ?"),
        ("UPDATE t SET n = %(n)s WHERE w = %(w)s", "UPDATE t SET n = :n WHERE w = :w"),
        ("SELECT 'a%%' || %s, n %% 4 FROM t", "SELECT 'a%' || ?, n % 4 FROM t"),
        # SQLite's own style, without the portable marks, runs as written
        ("SELECT n % 4 FROM t WHERE w LIKE 'a%' AND n = ?", None),
        ("SELECT n FROM t WHERE w = :w", None),
    ],
)
def test_portable_statements_are_translated_to_sqlites_style_and_its_own_are_not(
    portable: str, sqlite: str | None
) -> None:
    assert to_sqlite(portable) == (portable if sqlite is None else sqlite)


# -- the same service on both stores, its table created by a migration ------------------------

ledger = Service("ledger", partitions=1)


class Deposit(Event):
    account: str
    amount: int


class Account(BaseModel):
    account: str


accounts = ledger.view("accounts", Account, key="account")


@ledger.migration
def create_balances(db: Migrator) -> None:
    db.execute("CREATE TABLE balances (account TEXT PRIMARY KEY, cents BIGINT NOT NULL)")


@ledger.migration
def add_deposits(db: Migrator) -> None:
    db.execute("ALTER TABLE balances ADD COLUMN deposits INTEGER NOT NULL DEFAULT 0")


@ledger.handles(Deposit, key="account")
def deposit(command: Deposit, tx: Transaction) -> None:
    if command.amount <= 0:
        tx.execute("DELETE FROM balances")  # dropped with the rejection
        tx.reject("deposits are positive")
    tx[accounts].put(Account(account=command.account))
    tx.execute(
        "INSERT INTO balances (account, cents, deposits) VALUES (%(account)s, %(cents)s, 1) "
        "ON CONFLICT (account) DO UPDATE SET cents = balances.cents + excluded.cents, "
        "deposits = balances.deposits + 1",
        {"account": command.account, "cents": command.amount},
    )
    tx.execute("UPDATE balances SET cents = cents - (cents %% 100) WHERE account = %s", ("bob",))


@dataclass
class Database:
    url: str
    read: Callable[[str], list[tuple[Any, ...]]]  # rows of a query on the service's tables


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":

        def read_sqlite(sql: str) -> list[tuple[Any, ...]]:
            with closing(sqlite3.connect(tmp_path / "ledger.db")) as db:
                return db.execute(sql).fetchall()

        yield Database(f"sqlite:///{tmp_path}/{{service}}.db", read_sqlite)
        return
    url: str = request.getfixturevalue("postgres_url")
    with schemas(url) as prefix:

        def read_postgres(sql: str) -> list[tuple[Any, ...]]:
            with psycopg.connect(url) as conn:
                conn.execute(f'SET search_path TO "{prefix}ledger"')
                return conn.execute(sql).fetchall()

        yield Database(with_schema(url, prefix + "{service}"), read_postgres)


def test_a_handlers_portable_statements_run_alike_on_sqlite_and_postgresql(
    database: Database, tmp_path: Path
) -> None:
    log_url = f"embedded:///{tmp_path}/log.db"
    with LandscapeTest(ledger, log_url=log_url, db_url=database.url) as test:
        # the worker prepared the views; the migrations run when prepare is given them
        test.stores["ledger"].prepare("ledger", [accounts], ledger.migrations)
        for account, amount in [("ada", 250), ("bob", 199), ("ada", 5), ("ada", -1)]:
            test.send(Deposit(account=account, amount=amount))
        test.run_until_quiet()
        assert test.dead_letters("ledger") == []
    rows = database.read("SELECT account, cents, deposits FROM balances ORDER BY account")
    assert rows == [("ada", 255, 2), ("bob", 100, 1)]
