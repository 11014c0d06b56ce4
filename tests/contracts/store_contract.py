"""The behaviour every store backend must show; backends subclass `StoreContract`.

A subclass provides the `store` fixture (a fresh, open store). Each test declares its own
service with a unique name, so backends that keep one schema per service stay isolated.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import BaseModel

from loglane.errors import (
    BatchConflictError,
    BatchRejectedError,
    ConfigurationError,
    StaleBatchError,
)
from loglane.migrations import Migration, Migrator
from loglane.records import Message, TopicPartition
from loglane.service import Service
from loglane.stores.base import Batch, RequestOutcome, RequestStatus, Statement, Store
from loglane.views import View


class Account(BaseModel):
    account_id: str
    owner: str
    balance: int
    active: bool = True


class Counter(BaseModel):
    number: int
    hits: int


@dataclass
class Declared:
    service: Service
    accounts: View[Account]
    counters: View[Counter]

    @property
    def name(self) -> str:
        return self.service.name

    def batch(self, expected: int | None, position: int, **changes: object) -> Batch:
        """A batch of `SOURCE`; `writes` may hold model rows, written as their images."""
        writes = changes.pop("writes", {})
        changes["writes"] = {
            view: {key: None if row is None else view.image(row) for key, row in rows.items()}
            for view, rows in writes.items()  # type: ignore[attr-defined]
        }
        return Batch(
            service=self.name,
            source=SOURCE,
            expected_position=expected,
            position=position,
            **changes,  # type: ignore[arg-type]
        )


SOURCE = TopicPartition("bank.in", 2)


def commit_sent_ahead(store: Store, batch: Batch) -> int | None:
    """`Store.commit` as the worker makes it: the commit sent with the writes, and confirmed
    after the transaction's context ended."""
    with store.transaction(batch.service, {batch.source: batch.expected_position}) as tx:
        sent = tx.send_all([batch])
    return sent.wait().get(batch.source)


def declare_bank(store: Store) -> Declared:
    """A service with a uniquely named schema, its views prepared in `store`."""
    service = Service(f"bank_{uuid.uuid4().hex[:8]}")
    declared = Declared(
        service,
        service.view("accounts", Account, key="account_id", indexes=["owner", "active"]),
        service.view("counters", Counter, key="number"),
    )
    store.prepare(service.name, list(service.views.values()))
    return declared


def check_moved_into_outcome_rows(
    store: Store, service: str, source: TopicPartition, published: Message, waiting: Message
) -> None:
    """What a store migrated from the two tables of before (outcomes, and the outbox) must
    still hold: request `r1`'s outcome with the event it `published`, and the message still
    `waiting` in the outbox of `source` (stored at position 7), to publish once."""
    assert store.positions(service) == {source: 7}
    assert store.request(service, "r1") == RequestOutcome(
        request_id="r1", status=RequestStatus.DONE, event_ids=("e1",), events=(published,)
    )
    entries = store.outbox(service, [source], 10)
    assert [entry.message for entry in entries] == [waiting]  # the published one not again
    assert store.outbox_backlog(service) == {source: 1}
    store.delete_outbox(service, {source: entries[-1].seq})
    assert store.outbox(service, [source], 10) == []


def message(value: str) -> Message:
    return Message("bank.out", b"k", value.encode(), (("ce_id", value.encode()),))


class StoreContract:
    @pytest.fixture
    def store(self) -> Iterator[Store]:
        raise NotImplementedError("a backend's test class provides the store fixture")

    @pytest.fixture
    def bank(self, store: Store) -> Declared:
        return declare_bank(store)

    def test_a_new_service_has_no_positions(self, store: Store, bank: Declared) -> None:
        assert store.positions(bank.name) == {}

    def test_a_batch_commits_rows_position_outbox_and_outcomes_together(
        self, store: Store, bank: Declared
    ) -> None:
        ada = Account(account_id="a1", owner="ada", balance=10)
        emitted = (message("e1"), message("e2"))
        outcome = RequestOutcome(
            request_id="r1", status=RequestStatus.DONE, event_ids=("e1", "e2"), events=emitted
        )
        batch = bank.batch(
            None,
            5,
            writes={bank.accounts: {"a1": ada}},
            outbox=[*emitted, message("dead")],  # a command's events, then a dead letter
            requests=[outcome],
            applied_ids=["in-1"],
        )
        last_seq = store.commit(batch)
        assert store.positions(bank.name) == {SOURCE: 5}
        assert store.get(bank.accounts, "a1") == ada
        entries = store.outbox(bank.name, [SOURCE], 10)
        assert [e.message for e in entries] == [*emitted, message("dead")]
        assert entries[-1].seq == last_seq
        assert entries[0].seq == entries[1].seq < last_seq  # a command's events: one row
        assert all(e.source == SOURCE for e in entries)
        assert store.request(bank.name, "r1") == outcome
        assert store.applied(bank.name, SOURCE, 0) == [(5, ["in-1"])]

    def test_a_batch_from_a_stale_position_changes_nothing(
        self, store: Store, bank: Declared
    ) -> None:
        store.commit(bank.batch(None, 10))
        stale = bank.batch(
            4,
            12,
            writes={bank.accounts: {"a1": Account(account_id="a1", owner="z", balance=1)}},
            outbox=[message("zombie")],
            requests=[RequestOutcome(request_id="r", status=RequestStatus.DONE)],
            applied_ids=["z"],
        )
        with pytest.raises(StaleBatchError):
            store.commit(stale)
        assert store.positions(bank.name) == {SOURCE: 10}
        assert store.get(bank.accounts, "a1") is None
        assert store.outbox(bank.name, [SOURCE], 10) == []
        assert store.request(bank.name, "r") is None
        assert store.applied(bank.name, SOURCE, 0) == []

    def test_a_first_batch_loses_to_a_position_committed_meanwhile(
        self, store: Store, bank: Declared
    ) -> None:
        store.commit(bank.batch(None, 3))
        with pytest.raises(StaleBatchError):
            store.commit(bank.batch(None, 7))
        assert store.positions(bank.name) == {SOURCE: 3}

    def test_positions_advance_batch_after_batch(self, store: Store, bank: Declared) -> None:
        store.commit(bank.batch(None, 3))
        store.commit(bank.batch(3, 9))
        other = TopicPartition("other.out", 0)
        store.commit(Batch(service=bank.name, source=other, expected_position=None, position=1))
        assert store.positions(bank.name) == {SOURCE: 9, other: 1}

    def test_rows_are_replaced_and_deleted(self, store: Store, bank: Declared) -> None:
        first = Account(account_id="a1", owner="ada", balance=1)
        second = Account(account_id="a1", owner="ada", balance=2)
        store.commit(bank.batch(None, 1, writes={bank.accounts: {"a1": first}}))
        store.commit(bank.batch(1, 2, writes={bank.accounts: {"a1": second}}))
        assert store.get(bank.accounts, "a1") == second
        store.commit(bank.batch(2, 3, writes={bank.accounts: {"a1": None}}))
        assert store.get(bank.accounts, "a1") is None

    def test_integer_keys_round_trip(self, store: Store, bank: Declared) -> None:
        rows = {n: Counter(number=n, hits=n * 10) for n in (1, 2, 30)}
        store.commit(bank.batch(None, 1, writes={bank.counters: rows}))
        assert store.get(bank.counters, 30) == Counter(number=30, hits=300)
        assert [c.number for c in store.query(bank.counters, after=1)] == [2, 30]

    def test_queries_filter_on_indexed_fields_and_page_by_key(
        self, store: Store, bank: Declared
    ) -> None:
        rows = {
            f"a{i:02}": Account(
                account_id=f"a{i:02}", owner="ada" if i % 2 else "bob", balance=i, active=i % 3 != 0
            )
            for i in range(20)
        }
        store.commit(bank.batch(None, 1, writes={bank.accounts: rows}))
        page = store.query(bank.accounts, where={"owner": "ada"}, limit=4)
        assert [a.account_id for a in page] == ["a01", "a03", "a05", "a07"]
        after = store.query(bank.accounts, where={"owner": "ada"}, after="a07", limit=100)
        assert [a.account_id for a in after] == ["a09", "a11", "a13", "a15", "a17", "a19"]
        inactive = store.query(bank.accounts, where={"active": False, "owner": "bob"})
        assert [a.account_id for a in inactive] == ["a00", "a06", "a12", "a18"]
        assert len(store.query(bank.accounts, limit=100)) == 20

    def test_a_query_on_an_unindexed_field_is_refused(self, store: Store, bank: Declared) -> None:
        with pytest.raises(ConfigurationError, match="cannot filter on balance"):
            store.query(bank.accounts, where={"balance": 3})

    def test_published_outbox_entries_are_deleted_up_to_a_seq(
        self, store: Store, bank: Declared
    ) -> None:
        first = store.commit(bank.batch(None, 1, outbox=[message("a"), message("b")]))
        assert first is not None
        store.commit(bank.batch(1, 2, outbox=[message("c")]))
        store.delete_outbox(bank.name, {SOURCE: first})
        assert [e.message.value for e in store.outbox(bank.name, [SOURCE], 10)] == [b"c"]
        assert store.outbox_backlog(bank.name) == {SOURCE: 1}
        (entry,) = store.outbox(bank.name, [SOURCE], 10)
        store.delete_outbox(bank.name, {SOURCE: entry.seq})
        assert store.outbox(bank.name, [SOURCE], 10) == []
        assert store.outbox_backlog(bank.name) == {}

    def test_outbox_seqs_keep_growing_after_everything_was_deleted(
        self, store: Store, bank: Declared
    ) -> None:
        first = store.commit(bank.batch(None, 1, outbox=[message("a")]))
        assert first is not None
        store.delete_outbox(bank.name, {SOURCE: first})
        second = store.commit(bank.batch(1, 2, outbox=[message("b")]))
        assert second is not None
        assert second > first

    def test_outbox_entries_are_listed_per_source_oldest_first_up_to_a_limit(
        self, store: Store, bank: Declared
    ) -> None:
        store.commit(bank.batch(None, 1, outbox=[message(str(i)) for i in range(5)]))
        other = TopicPartition("bank.in", 0)
        store.commit(
            Batch(
                service=bank.name,
                source=other,
                expected_position=None,
                position=1,
                outbox=[message("other")],
            )
        )
        entries = store.outbox(bank.name, [SOURCE], 3)
        assert [e.message.value for e in entries] == [b"0", b"1", b"2"]
        assert [e.message.value for e in store.outbox(bank.name, [other], 10)] == [b"other"]

    def test_a_request_outcome_can_be_replaced(self, store: Store, bank: Declared) -> None:
        failed = RequestOutcome(request_id="r", status=RequestStatus.FAILED, detail="boom")
        store.commit(bank.batch(None, 1, requests=[failed]))
        assert store.request(bank.name, "r") == failed
        done = RequestOutcome(
            request_id="r", status=RequestStatus.REJECTED, event_ids=("x",), detail="exists"
        )
        store.commit(bank.batch(1, 2, requests=[done]))
        assert store.request(bank.name, "r") == done
        assert store.request(bank.name, "unknown") is None

    def test_a_batch_that_replaces_one_outcome_keeps_its_new_ones_too(
        self, store: Store, bank: Declared
    ) -> None:
        failed = RequestOutcome(request_id="r0", status=RequestStatus.FAILED)
        store.commit(bank.batch(None, 1, requests=[failed]))
        again = RequestOutcome(request_id="r0", status=RequestStatus.DONE, event_ids=("e",))
        new = [RequestOutcome(request_id=f"r{n}", status=RequestStatus.DONE) for n in (1, 2)]
        store.commit(bank.batch(1, 2, requests=[new[0], again, new[1]]))
        assert [store.request(bank.name, f"r{n}") for n in range(3)] == [again, *new]

    def test_prepare_is_idempotent_and_adds_columns_for_new_indexes(
        self, store: Store, bank: Declared
    ) -> None:
        row = Account(account_id="a1", owner="ada", balance=42)
        store.commit(bank.batch(None, 1, writes={bank.accounts: {"a1": row}}))
        store.prepare(bank.name, list(bank.service.views.values()))
        wider = Service(bank.name)
        accounts = wider.view(
            "accounts", Account, key="account_id", indexes=["owner", "active", "balance"]
        )
        store.prepare(wider.name, [accounts])
        assert [a.account_id for a in store.query(accounts, where={"balance": 42})] == ["a1"]
        assert store.get(accounts, "a1") == row

    def test_applied_ids_are_kept_per_partition_until_forgotten(
        self, store: Store, bank: Declared
    ) -> None:
        store.commit(bank.batch(None, 10, applied_ids=["a", "b"]))
        store.commit(bank.batch(10, 20, applied_ids=["c"]))
        other = TopicPartition("bank.in", 0)
        store.commit(
            Batch(
                service=bank.name,
                source=other,
                expected_position=None,
                position=5,
                applied_ids=["x"],
            )
        )
        assert store.applied(bank.name, SOURCE, 0) == [(10, ["a", "b"]), (20, ["c"])]
        assert store.applied(bank.name, SOURCE, 10) == [(20, ["c"])]
        assert store.applied(bank.name, other, 0) == [(5, ["x"])]
        store.commit(bank.batch(20, 30, applied_ids=["d"], forget_applied_before=20))
        assert store.applied(bank.name, SOURCE, 0) == [(20, ["c"]), (30, ["d"])]

    def test_a_transaction_reads_committed_rows_and_commits_its_batch(
        self, store: Store, bank: Declared
    ) -> None:
        ada = Account(account_id="a1", owner="ada", balance=1)
        store.commit(bank.batch(None, 1, writes={bank.accounts: {"a1": ada}}))
        with store.transaction(bank.name, {SOURCE: 1}) as tx:
            document = tx.get(bank.accounts, "a1")
            assert document is not None
            assert Account.model_validate_json(document) == ada
            assert tx.get(bank.accounts, "nobody") is None
            richer = ada.model_copy(update={"balance": 2})
            tx.write(bank.batch(1, 2, writes={bank.accounts: {"a1": richer}}))
        assert store.get(bank.accounts, "a1") == richer
        assert store.positions(bank.name) == {SOURCE: 2}

    def test_a_transaction_on_a_moved_position_is_refused_before_anything_runs(
        self, store: Store, bank: Declared
    ) -> None:
        store.commit(bank.batch(None, 5))
        with pytest.raises(StaleBatchError), store.transaction(bank.name, {SOURCE: 3}):
            pytest.fail("the block of a stale transaction ran")
        with pytest.raises(StaleBatchError), store.transaction(bank.name, {SOURCE: None}):
            pytest.fail("the block of a stale transaction ran")

    def test_a_batch_the_store_refuses_raises_batch_rejected_and_writes_nothing(
        self, store: Store, bank: Declared
    ) -> None:
        ada = Account(account_id="a1", owner="ada", balance=1)
        broken = bank.batch(
            None,
            1,
            writes={bank.accounts: {"a1": ada}},
            statements=[Statement("INSERT INTO no_such_table VALUES (1)")],
        )
        with pytest.raises(BatchRejectedError), store.transaction(bank.name, {SOURCE: None}) as tx:
            tx.write(broken)
        assert store.get(bank.accounts, "a1") is None
        assert store.positions(bank.name) == {}

    def test_two_transactions_reading_one_row_lose_no_update(
        self, store: Store, bank: Declared
    ) -> None:
        """Batches of two partitions adding to one row, the second reading while the first is
        open: the store serializes them (it waits) or refuses the loser (BatchConflictError,
        and the worker runs it again); either way no update is lost."""
        other = TopicPartition("bank.in", 0)
        first_read = threading.Event()
        conflicts: list[TopicPartition] = []

        def add_one(source: TopicPartition, hold: bool) -> None:
            expected = None
            while True:
                try:
                    with store.transaction(bank.name, {source: expected}) as tx:
                        document = tx.get(bank.counters, 7)
                        hits = 0 if document is None else Counter.model_validate_json(document).hits
                        if hold:
                            hold = False
                            first_read.set()
                            second.join(0.5)  # the second reads and commits now, if it can
                        row = Counter(number=7, hits=hits + 1)
                        tx.write(
                            Batch(
                                service=bank.name,
                                source=source,
                                expected_position=expected,
                                position=1,
                                writes={bank.counters: {7: bank.counters.image(row)}},
                            )
                        )
                    return
                except BatchConflictError:
                    conflicts.append(source)

        second = threading.Thread(target=lambda: (first_read.wait(30), add_one(other, False)))
        second.start()
        add_one(SOURCE, True)
        second.join(60)
        assert store.get(bank.counters, 7) == Counter(number=7, hits=2)
        assert conflicts in ([], [SOURCE]), "only the first, which read before, can lose"

    def test_watermarks_are_kept_with_the_position(self, store: Store, bank: Declared) -> None:
        assert store.watermarks(bank.name, SOURCE) == {}
        store.commit(bank.batch(None, 1, origins={"up.in/0": (4, 1)}))
        store.commit(bank.batch(1, 2))  # a batch that moved no watermark keeps them
        assert store.watermarks(bank.name, SOURCE) == {"up.in/0": (4, 1)}
        store.commit(bank.batch(2, 3, origins={"up.in/0": (9, 0), "up.in/1": (2, 0)}))
        assert store.watermarks(bank.name, SOURCE) == {"up.in/0": (9, 0), "up.in/1": (2, 0)}

    def test_request_outcomes_of_two_sources_with_one_id_are_kept_apart(
        self, store: Store, bank: Declared
    ) -> None:
        ours = RequestOutcome(request_id="r", status=RequestStatus.DONE)
        theirs = RequestOutcome(request_id="r", source="billing", status=RequestStatus.FAILED)
        store.commit(bank.batch(None, 1, requests=[ours, theirs]))
        assert store.request(bank.name, "r") == ours
        assert store.request(bank.name, "r", source="billing") == theirs
        assert store.requests(bank.name, ["r"], source="nobody") == {}

    def test_request_outcomes_older_than_the_retention_are_pruned(
        self, store: Store, bank: Declared
    ) -> None:
        store.ledger_retention = 0.0  # type: ignore[attr-defined]
        old = RequestOutcome(request_id="old", status=RequestStatus.DONE)
        store.commit(bank.batch(None, 1, requests=[old]))
        for n in range(1, 1100):  # pruning runs every so many commits that carry outcomes
            outcome = RequestOutcome(request_id=f"r{n}", status=RequestStatus.DONE)
            store.commit(bank.batch(n, n + 1, requests=[outcome]))
        assert store.request(bank.name, "old") is None
        assert store.request(bank.name, "r1099") is not None

    def test_an_outcome_whose_events_wait_to_be_published_outlives_the_retention(
        self, store: Store, bank: Declared
    ) -> None:
        store.ledger_retention = 0.0  # type: ignore[attr-defined]
        emitted = (message("kept"),)
        waiting = RequestOutcome(
            request_id="waiting", status=RequestStatus.DONE, event_ids=("kept",), events=emitted
        )
        seq = store.commit(bank.batch(None, 1, outbox=[*emitted], requests=[waiting]))
        assert seq is not None

        def commit_until_pruned(start: int) -> int:
            for n in range(start, start + 1100):  # pruning runs every so many commits
                outcome = RequestOutcome(request_id=f"r{n}", status=RequestStatus.DONE)
                store.commit(bank.batch(n, n + 1, requests=[outcome]))
            assert store.request(bank.name, f"r{start}") is None  # a prune ran
            return start + 1100

        position = commit_until_pruned(1)
        assert store.request(bank.name, "waiting") == waiting
        assert [e.message for e in store.outbox(bank.name, [SOURCE], 10)] == [*emitted]
        store.delete_outbox(bank.name, {SOURCE: seq})
        assert store.outbox_backlog(bank.name) == {}
        commit_until_pruned(position)
        assert store.request(bank.name, "waiting") is None

    def test_a_request_id_used_again_answers_with_its_latest_outcome(
        self, store: Store, bank: Declared
    ) -> None:
        first = RequestOutcome(request_id="r", status=RequestStatus.FAILED, detail="bad")
        again = RequestOutcome(
            request_id="r",
            status=RequestStatus.DONE,
            event_ids=("e",),
            events=(message("e"),),
        )
        store.commit(bank.batch(None, 1, outbox=[message("dead")], requests=[first]))
        store.commit(bank.batch(1, 2, outbox=[*again.events], requests=[again]))
        assert store.request(bank.name, "r") == again
        assert store.requests(bank.name, ["r"]) == {"r": again}
        # what each command sent out is still to publish, in the order it was committed
        outbox = store.outbox(bank.name, [SOURCE], 10)
        assert [e.message for e in outbox] == [message("dead"), message("e")]

    def test_a_transaction_reads_many_rows_at_once(self, store: Store, bank: Declared) -> None:
        rows = {n: Counter(number=n, hits=n * 10) for n in range(1, 700)}
        store.commit(bank.batch(None, 1, writes={bank.counters: rows}))
        with store.transaction(bank.name, {SOURCE: 1}) as tx:
            found = tx.get_many(bank.counters, [*rows, 5000])
        assert {key: Counter.model_validate_json(doc) for key, doc in found.items()} == rows

    def test_a_transaction_finds_rows_by_indexed_fields_in_key_order_up_to_a_limit(
        self, store: Store, bank: Declared
    ) -> None:
        rows = {
            f"a{n}": Account(account_id=f"a{n}", owner="ada" if n % 2 else "bob", balance=n)
            for n in range(1, 8)
        }
        store.commit(bank.batch(None, 1, writes={bank.accounts: rows}))
        with store.transaction(bank.name, {SOURCE: 1}) as tx:
            found = tx.find(bank.accounts, {"owner": "ada"}, 3)
            assert [key for key, _ in found] == ["a1", "a3", "a5"]
            assert [Account.model_validate_json(doc) for _, doc in found] == [
                rows["a1"],
                rows["a3"],
                rows["a5"],
            ]
            assert [key for key, _ in tx.find(bank.accounts, {"owner": "bob"}, 10)] == [
                "a2",
                "a4",
                "a6",
            ]
            assert tx.find(bank.accounts, {"owner": "ada", "account_id": "a3"}, 10)[0][0] == "a3"
            assert tx.find(bank.accounts, {"owner": "nobody"}, 10) == []
            assert len(tx.find(bank.accounts, {}, 100)) == 7

    def test_finding_by_a_field_without_an_index_is_refused_naming_the_indexed_ones(
        self, store: Store, bank: Declared
    ) -> None:
        with (
            store.transaction(bank.name, {SOURCE: None}) as tx,
            pytest.raises(ConfigurationError, match="indexed fields: account_id, owner, active"),
        ):
            tx.find(bank.accounts, {"balance": 3}, 10)

    def test_two_transactions_finding_one_row_lose_no_update(
        self, store: Store, bank: Declared
    ) -> None:
        """As two batches reading one row by its key: the store serializes them, or refuses
        the one that found the row first and committed last; no update is lost."""
        store.commit(
            bank.batch(
                None,
                1,
                writes={bank.accounts: {"a1": Account(account_id="a1", owner="ada", balance=0)}},
            )
        )
        other = TopicPartition("bank.in", 0)
        first_found = threading.Event()
        conflicts: list[TopicPartition] = []

        def add_one(source: TopicPartition, expected: int | None, hold: bool) -> None:
            while True:
                try:
                    with store.transaction(bank.name, {source: expected}) as tx:
                        [(key, document)] = tx.find(bank.accounts, {"owner": "ada"}, 10)
                        account = Account.model_validate_json(document)
                        if hold:
                            hold = False
                            first_found.set()
                            second.join(0.5)  # the second finds and commits now, if it can
                        richer = account.model_copy(update={"balance": account.balance + 1})
                        tx.write(
                            Batch(
                                service=bank.name,
                                source=source,
                                expected_position=expected,
                                position=(expected or 0) + 1,
                                writes={bank.accounts: {key: bank.accounts.image(richer)}},
                            )
                        )
                    return
                except BatchConflictError:
                    conflicts.append(source)

        second = threading.Thread(
            target=lambda: (first_found.wait(30), add_one(other, None, False))
        )
        second.start()
        add_one(SOURCE, 1, True)
        second.join(60)
        found = store.get(bank.accounts, "a1")
        assert found is not None
        assert found.balance == 2
        assert conflicts in ([], [SOURCE]), "only the first, which found first, can lose"

    def test_statements_in_the_portable_form_run_on_every_store(
        self, store: Store, bank: Declared
    ) -> None:
        statements = [
            Statement(
                "INSERT INTO counters (number, doc) VALUES (%s %% 4, %s)",
                (7, '{"number": 3, "hits": 1}'),
            ),
            Statement(
                "UPDATE counters SET doc = %(doc)s WHERE number = %(number)s",
                {"doc": '{"number": 3, "hits": 2}', "number": 3},
            ),
        ]
        store.commit(bank.batch(None, 1, statements=statements))
        assert store.get(bank.counters, 3) == Counter(number=3, hits=2)

    def test_a_services_own_migrations_run_once_each_in_the_order_declared(
        self, store: Store, bank: Declared
    ) -> None:
        runs: list[tuple[str, str]] = []

        @bank.service.migration
        def first(db: Migrator) -> None:
            runs.append(("first", db.dialect))
            db.execute(
                "INSERT INTO counters (number, doc) VALUES (%s, %s)",
                (1, '{"number": 1, "hits": 10}'),
            )

        @bank.service.migration
        def second(db: Migrator) -> None:
            runs.append(("second", db.dialect))
            db.execute(
                "UPDATE counters SET doc = %(doc)s WHERE number = 1",
                {"doc": '{"number": 1, "hits": 11}'},
            )

        views = list(bank.service.views.values())
        store.prepare(bank.name, views, bank.service.migrations)
        store.prepare(bank.name, views, bank.service.migrations)
        assert [name for name, _ in runs] == ["first", "second"]
        assert {dialect for _, dialect in runs} < {"sqlite", "postgresql"}
        assert store.get(bank.counters, 1) == Counter(number=1, hits=11)

    def test_a_failing_migration_keeps_none_of_its_start_and_names_itself(
        self, store: Store, bank: Declared
    ) -> None:
        def fill(db: Migrator) -> None:
            db.execute(
                "INSERT INTO counters (number, doc) VALUES (%s, %s)",
                (2, '{"number": 2, "hits": 1}'),
            )

        def broken(db: Migrator) -> None:
            db.execute("INSERT INTO no_such_table VALUES (1)")

        views = list(bank.service.views.values())
        with pytest.raises(ConfigurationError, match="migration 'broken' failed"):
            store.prepare(bank.name, views, [Migration("fill", fill), Migration("broken", broken)])
        assert store.get(bank.counters, 2) is None
        store.prepare(bank.name, views, [Migration("fill", fill)])
        assert store.get(bank.counters, 2) == Counter(number=2, hits=1)

    def test_an_indexed_field_whose_type_changed_is_migrated_and_filled_from_upcast_rows(
        self, store: Store, bank: Declared
    ) -> None:
        class Ticket(BaseModel):
            ticket_id: str
            seat: str

        class SeatNumber(BaseModel):
            ticket_id: str
            seat: int

        def number(document: dict[str, object]) -> dict[str, object]:
            return {**document, "seat": int(str(document["seat"]).removeprefix("row "))}

        was = Service(bank.name).view("tickets", Ticket, key="ticket_id", indexes=["seat"])
        store.prepare(bank.name, [was])
        old = {"t1": Ticket(ticket_id="t1", seat="row 7"), "t2": Ticket(ticket_id="t2", seat="9")}
        store.commit(bank.batch(None, 1, writes={was: old}))
        now = Service(bank.name).view(
            "tickets",
            SeatNumber,
            key="ticket_id",
            indexes=["seat"],
            version=2,
            upcasters={1: number},
        )
        store.prepare(bank.name, [now])
        assert store.query(now, where={"seat": 7}) == [SeatNumber(ticket_id="t1", seat=7)]
        new = SeatNumber(ticket_id="t3", seat=7)
        store.commit(bank.batch(1, 2, writes={now: {"t3": new}}))
        assert [t.ticket_id for t in store.query(now, where={"seat": 7})] == ["t1", "t3"]
        assert store.query(now, where={"seat": 9}) == [SeatNumber(ticket_id="t2", seat=9)]
