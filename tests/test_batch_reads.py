"""Batch-first reads: the rows a batch's handlers read at their keys come in one query a view."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from loglane.records import TopicPartition
from loglane.stores.base import Batch, Store, StoreTransaction
from loglane.testing import LandscapeTest
from loglane.views import Key, View
from tests.apps.ledger import accounts, deposits, ledger


class CountingTransaction(StoreTransaction):
    """A store transaction that counts its round trips."""

    def __init__(self, inner: StoreTransaction, calls: list[str]) -> None:
        self._inner = inner
        self._calls = calls

    def get(self, view: View[Any], key: Key) -> str | bytes | None:
        self._calls.append("get")
        return self._inner.get(view, key)

    def get_many(self, view: View[Any], keys: Sequence[Key]) -> dict[Key, str | bytes]:
        self._calls.append(f"get_many {len(keys)}")
        return self._inner.get_many(view, keys)

    def write_all(
        self, batches: Sequence[Batch], published: Mapping[TopicPartition, int] | None = None
    ) -> dict[TopicPartition, int]:
        return self._inner.write_all(batches, published)


def counting(store: Store, calls: list[str]) -> None:
    real = store.transaction

    @contextmanager
    def transaction(
        service: str, fences: Mapping[TopicPartition, int | None]
    ) -> Iterator[StoreTransaction]:
        with real(service, fences) as inner:
            yield CountingTransaction(inner, calls)

    def opened(
        service: str, fences: Mapping[TopicPartition, int | None]
    ) -> AbstractContextManager[StoreTransaction]:
        return transaction(service, fences)

    store.transaction = opened  # type: ignore[method-assign]


def test_after_its_first_event_a_handler_gets_its_rows_in_one_read_per_batch() -> None:
    with LandscapeTest(ledger, batch_size=1000) as test:
        calls: list[str] = []
        counting(test.stores["ledger"], calls)
        test.send(deposits(accounts_count=1, per_account=1)[0])
        test.run_until_quiet()
        assert calls == ["get"], "the first event shows what its handler reads"
        calls.clear()
        for command in deposits(accounts_count=40, per_account=3)[40:]:  # seq 2 and 3
            test.send(command)
        test.run_until_quiet()
        assert all(call.startswith("get_many") for call in calls), calls
        assert len(calls) <= ledger.partitions
        account = test.view(accounts).get("acct-0")
        assert account is not None
        assert account.applied == 3
