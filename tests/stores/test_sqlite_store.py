"""The SQLite store passes the store contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loglane.stores.base import Store
from loglane.stores.sqlite import SQLiteStore
from tests.contracts.store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = SQLiteStore(tmp_path / "views.db")
        yield store
        store.close()
