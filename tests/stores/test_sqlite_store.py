"""The SQLite store passes the store contract, and migrates a file of an older version."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from loglane.errors import BatchRejectedError
from loglane.records import Message, TopicPartition, encode_headers, encode_messages
from loglane.stores._batch import forget_published
from loglane.stores._placeholders import to_sqlite
from loglane.stores.base import Batch, RequestOutcome, RequestStatus, Statement, Store
from loglane.stores.sqlite import _BACKLOG, _UNPUBLISHED, SQLiteStore
from tests.contracts.store_contract import (
    SOURCE,
    Account,
    StoreContract,
    check_moved_into_outcome_rows,
    commit_sent_ahead,
    declare_bank,
)


class TestSQLiteStore(StoreContract):
    store_type: type[SQLiteStore] = SQLiteStore

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = self.store_type(tmp_path / "views.db")
        yield store
        store.close()


class _SendingCommitsAhead(SQLiteStore):
    """Commits as the worker makes them (`commit_sent_ahead`)."""

    def commit(self, batch: Batch) -> int | None:
        return commit_sent_ahead(self, batch)


class TestSQLiteStoreSendingCommitsAhead(TestSQLiteStore):
    store_type = _SendingCommitsAhead


def test_a_commit_sent_ahead_that_fails_at_commit_raises_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A deferred constraint fails the COMMIT that the committer thread makes: the error is
    the confirmation's, the transaction is rolled back, and the file takes the next write."""
    store = SQLiteStore(tmp_path / "views.db")
    try:
        bank = declare_bank(store)
        store.commit(bank.batch(None, 1))
        with sqlite3.connect(tmp_path / "views.db") as db:
            db.execute("CREATE TABLE parents (id INTEGER PRIMARY KEY)")
            db.execute(
                "CREATE TABLE vetoes (parent INTEGER REFERENCES parents (id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        store._file.connection().execute("PRAGMA foreign_keys = ON")  # checked at COMMIT
        row = Account(account_id="a1", owner="ada", balance=1)
        vetoed = [Statement("INSERT INTO vetoes VALUES (1)")]
        with store.transaction(bank.name, {SOURCE: 1}) as tx:
            sent = tx.send_all(
                [bank.batch(1, 2, writes={bank.accounts: {"a1": row}}, statements=vetoed)]
            )
        with pytest.raises(BatchRejectedError, match="FOREIGN KEY"):
            sent.wait()
        assert store.get(bank.accounts, "a1") is None
        assert store.positions(bank.name) == {SOURCE: 1}
        store.commit(bank.batch(1, 2, writes={bank.accounts: {"a1": row}}))
        assert store.get(bank.accounts, "a1") == row
    finally:
        store.close()


VERSION_2 = """
CREATE TABLE loglane_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO loglane_meta VALUES ('schema_version', '2');
CREATE TABLE loglane_positions (service TEXT NOT NULL, topic TEXT NOT NULL,
    partition INTEGER NOT NULL, offset INTEGER NOT NULL, origins BLOB,
    PRIMARY KEY (service, topic, partition)) WITHOUT ROWID;
CREATE TABLE loglane_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL,
    source_topic TEXT NOT NULL, source_partition INTEGER NOT NULL, topic TEXT NOT NULL,
    key BLOB, value BLOB NOT NULL, headers BLOB NOT NULL);
CREATE TABLE loglane_requests (service TEXT NOT NULL, source TEXT NOT NULL,
    request_id TEXT NOT NULL, status TEXT NOT NULL, event_ids TEXT NOT NULL, detail TEXT,
    events BLOB, handled_at REAL NOT NULL, PRIMARY KEY (service, source, request_id))
    WITHOUT ROWID
"""


def test_a_store_of_version_2_keeps_its_outcomes_and_what_waited_in_its_outbox(
    tmp_path: Path,
) -> None:
    published = Message("s.out", b"k", b"published", (("ce_id", b"e1"),))
    waiting = Message("s.out", b"k", b"waiting", (("ce_id", b"e2"),))
    with sqlite3.connect(tmp_path / "views.db") as db:
        for statement in VERSION_2.split(";"):
            db.execute(statement)
        db.execute("INSERT INTO loglane_positions VALUES ('s', 's.in', 0, 7, NULL)")
        db.execute(
            "INSERT INTO loglane_outbox (service, source_topic, source_partition, topic, key, "
            "value, headers) VALUES ('s', 's.in', 0, 's.out', ?, ?, ?)",
            (waiting.key, waiting.value, encode_headers(waiting.headers)),
        )
        db.execute(
            "INSERT INTO loglane_requests VALUES ('s', 'loglane', 'r1', 'done', '[\"e1\"]', "
            "NULL, ?, 0)",
            (encode_messages([published]),),
        )
    db.close()
    store = SQLiteStore(tmp_path / "views.db")
    check_moved_into_outcome_rows(store, "s", TopicPartition("s.in", 0), published, waiting)
    store.close()


def test_published_messages_of_no_command_are_deleted_and_outcomes_kept(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "views.db")
    source = TopicPartition("s.in", 0)
    emitted = Message("s.out", b"k", b"emitted", ())
    outcome = RequestOutcome(request_id="r", status=RequestStatus.DONE, events=(emitted,))
    lone = [Message("s.out", b"k", f"event {n}".encode(), ()) for n in range(3)]
    batch = Batch(
        service="s",
        source=source,
        expected_position=None,
        position=4,
        outbox=[lone[0], emitted, *lone[1:]],
        requests=[outcome],
    )
    store.delete_outbox("s", {source: store.commit(batch) or 0})
    rows = sqlite3.connect(tmp_path / "views.db").execute(
        "SELECT request_id, messages IS NOT NULL FROM loglane_outcomes"
    )
    assert rows.fetchall() == [("r", True)]
    assert store.request("s", "r") == outcome
    store.close()


def test_reading_and_forgetting_the_outbox_start_at_the_published_watermark(
    tmp_path: Path,
) -> None:
    """Published outcomes stay for the retention (a day by default): the outbox's reads must
    seek past them in the index, not walk them."""
    SQLiteStore(tmp_path / "views.db").close()
    source = TopicPartition("s.in", 0)
    ((forget, _), _) = forget_published("loglane_positions", "loglane_outcomes", "s", {source: 9})
    db = sqlite3.connect(tmp_path / "views.db")
    for sql, index in (
        (_UNPUBLISHED, "loglane_outcomes_to_publish"),
        (_BACKLOG, "loglane_outcomes_to_publish"),
        (to_sqlite(forget), "loglane_outcomes_of_no_request"),
    ):
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", (1,) * sql.count("?"))]
        assert any(index in step and "seq>?" in step for step in plan), plan
    db.close()
