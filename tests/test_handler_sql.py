"""A handler's own SQL (`tx.execute`) runs in the batch's transaction, once in effect."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from pydantic import BaseModel

from loglane import Event, Service, Transaction
from loglane.stores.sqlite import SQLiteStore
from loglane.testing import LandscapeTest

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
