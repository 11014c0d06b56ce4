"""The SQLite store keeps the HTTP API's command ledger and tells when it changed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from loglane.records import TopicPartition
from loglane.stores.base import Batch, Store
from loglane.stores.sqlite import SQLiteStore
from tests.contracts.ledger_contract import LedgerContract, appended


class TestSQLiteLedger(LedgerContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = SQLiteStore(tmp_path / "views.db")
        yield store
        store.close()


def test_the_change_marker_moves_when_another_connection_commits(tmp_path: Path) -> None:
    watching = SQLiteStore(tmp_path / "views.db")
    writing = SQLiteStore(tmp_path / "views.db")
    before = watching.change_marker()
    assert watching.change_marker() == before
    writing.commit(
        Batch(service="s", source=TopicPartition("s.in", 0), expected_position=None, position=1)
    )
    assert watching.change_marker() != before
    watching.close()
    writing.close()


def test_ledger_entries_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "views.db", ledger_retention=0.0)
    for n in range(300):
        store.record_accepted("s", [appended(f"r{n}", n)])
    assert store.accepted("s", "r0") is None
    store.close()


def test_a_store_made_before_outcomes_kept_events_gains_the_column(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "views.db") as db:
        db.execute(
            "CREATE TABLE loglane_requests (service TEXT NOT NULL, request_id TEXT NOT NULL, "
            "status TEXT NOT NULL, event_ids TEXT NOT NULL, detail TEXT, "
            "PRIMARY KEY (service, request_id)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO loglane_requests VALUES ('s', 'r1', 'done', '[]', NULL)")
    db.close()
    store = SQLiteStore(tmp_path / "views.db")
    outcome = store.request("s", "r1")
    assert outcome is not None
    assert outcome.events == ()
    store.close()
