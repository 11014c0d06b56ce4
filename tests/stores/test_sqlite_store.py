"""The SQLite store passes the store contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loglane.stores.base import Store
from loglane.stores.sqlite import SQLiteStore
from tests.contracts.store_contract import StoreContract, declare_bank


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = SQLiteStore(tmp_path / "views.db")
        yield store
        store.close()


def test_old_applied_ids_are_pruned_beyond_the_dedupe_window(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "views.db", dedupe_window=10)
    bank = declare_bank(store)
    position = None
    for n in range(300):
        store.commit(bank.batch(position, n + 1, applied_ids=[f"id{n}"]))
        position = n + 1
    assert store.applied(bank.name, "bank.in", ["id0", "id299"]) == {"id299"}
    store.close()
