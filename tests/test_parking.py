"""A dead-lettered command parks its key: later commands of that key wait, in order, until the
dead letter is re-driven or dropped (`loglane.parking`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from loglane import Event, RequestStatus, Retry, Service, Transaction, View
from loglane.dlq import drop, list_letters, redrive
from loglane.records import TopicPartition
from loglane.reset import ResetTarget, plan_reset, reset_positions
from loglane.testing import LandscapeTest
from tests.postgres import schemas, with_schema


class Entry(Event):
    account: str
    seq: int


class Ledger(BaseModel):
    account: str
    seqs: list[int] = []


def accounts_service(park_keys: bool = True) -> tuple[Service, View[Ledger]]:
    service = Service("accounts", partitions=2, retry=Retry(attempts=1), park_keys=park_keys)
    ledgers = service.view("ledgers", Ledger, key="account")

    @service.handles(Entry, key="account")
    def enter(entry: Entry, tx: Transaction) -> None:
        if (entry.account, entry.seq) in failing:
            raise RuntimeError(f"entry {entry.seq} of {entry.account} cannot be entered")
        ledger = tx[ledgers].get(entry.account) or Ledger(account=entry.account)
        tx[ledgers].put(Ledger(account=entry.account, seqs=[*ledger.seqs, entry.seq]))

    return service, ledgers


failing: set[tuple[str, int]] = set()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    failing.clear()
    log_url = f"embedded:///{tmp_path}/log.db"
    if request.param == "sqlite":
        yield {"log_url": log_url, "db_url": f"sqlite:///{tmp_path}/{{service}}.db"}
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    with schemas(postgres_url) as prefix:
        yield {"log_url": log_url, "db_url": with_schema(postgres_url, prefix + "{service}")}


def seqs(test: LandscapeTest, ledgers: View[Ledger], account: str) -> list[int]:
    ledger = test.view(ledgers).get(account)
    return [] if ledger is None else ledger.seqs


def test_later_commands_of_a_dead_lettered_key_wait_and_run_in_order_after_its_redrive(
    urls: dict[str, str],
) -> None:
    service, ledgers = accounts_service()
    failing.add(("ada", 2))
    with LandscapeTest(service, **urls) as test:
        requests = {seq: test.send(Entry(account="ada", seq=seq)) for seq in range(1, 6)}
        test.send(Entry(account="bob", seq=1))
        test.run_until_quiet()
        assert seqs(test, ledgers, "ada") == [1], "3, 4 and 5 wait behind 2"
        assert seqs(test, ledgers, "bob") == [1], "other keys go on"
        waiting = test.outcome(requests[4])
        assert waiting is None, "a parked command's request is still pending"
        (letter,) = list_letters(test.log, service, test.stores["accounts"])
        assert letter.request_id == requests[2]

        test.send(Entry(account="ada", seq=6))  # parked too: the key is still parked
        test.run_until_quiet()
        assert seqs(test, ledgers, "ada") == [1]

        failing.clear()
        assert redrive(test.log, test.stores["accounts"], service, letter.id) == 1
        test.run_until_quiet()
        assert seqs(test, ledgers, "ada") == [1, 2, 3, 4, 5, 6]
        done = test.outcome(requests[4])
        assert done is not None
        assert done.status is RequestStatus.DONE
        test.send(Entry(account="ada", seq=7))  # the key is free
        test.run_until_quiet()
        assert seqs(test, ledgers, "ada") == [1, 2, 3, 4, 5, 6, 7]


def test_dropping_the_dead_letter_releases_the_commands_parked_behind_it(
    urls: dict[str, str],
) -> None:
    service, ledgers = accounts_service()
    failing.add(("ada", 1))
    with LandscapeTest(service, **urls) as test:
        for seq in (1, 2, 3):
            test.send(Entry(account="ada", seq=seq))
        test.run_until_quiet()
        assert seqs(test, ledgers, "ada") == []
        (letter,) = list_letters(test.log, service, test.stores["accounts"])
        drop(test.log, test.stores["accounts"], service, letter.id)
        test.run_until_quiet()
        assert seqs(test, ledgers, "ada") == [2, 3], "1 was dropped; 2 and 3 ran in order"
        assert list_letters(test.log, service, test.stores["accounts"]) == []


def test_a_parked_command_that_fails_in_its_turn_heads_the_key_and_the_rest_wait(
    urls: dict[str, str],
) -> None:
    service, ledgers = accounts_service()
    failing.update({("ada", 1), ("ada", 3)})
    with LandscapeTest(service, **urls) as test:
        for seq in (1, 2, 3, 4):
            test.send(Entry(account="ada", seq=seq))
        test.run_until_quiet()
        failing.discard(("ada", 1))
        (first,) = list_letters(test.log, service, test.stores["accounts"])
        redrive(test.log, test.stores["accounts"], service, first.id)
        test.run_until_quiet()
        assert seqs(test, ledgers, "ada") == [1, 2], "3 failed in its turn; 4 waits behind it"
        (second,) = list_letters(test.log, service, test.stores["accounts"])
        assert second.reason.startswith("handler failed")
        failing.clear()
        redrive(test.log, test.stores["accounts"], service, second.id)
        test.run_until_quiet()
        assert seqs(test, ledgers, "ada") == [1, 2, 3, 4]


def test_parked_keys_outlive_the_worker_that_parked_them(urls: dict[str, str]) -> None:
    service, ledgers = accounts_service()
    failing.add(("ada", 1))
    with LandscapeTest(service, **urls) as test:
        test.send(Entry(account="ada", seq=1))
        test.send(Entry(account="ada", seq=2))
        test.run_until_quiet()
    with LandscapeTest(service, **urls) as again:
        again.send(Entry(account="ada", seq=3))
        again.run_until_quiet()
        assert seqs(again, ledgers, "ada") == []
        failing.clear()
        (letter,) = list_letters(again.log, service, again.stores["accounts"])
        redrive(again.log, again.stores["accounts"], service, letter.id)
        again.run_until_quiet()
        assert seqs(again, ledgers, "ada") == [1, 2, 3]


def test_without_parking_a_dead_letter_is_passed_over(urls: dict[str, str]) -> None:
    service, ledgers = accounts_service(park_keys=False)
    failing.add(("ada", 1))
    with LandscapeTest(service, **urls) as test:
        for seq in (1, 2, 3):
            test.send(Entry(account="ada", seq=seq))
        test.run_until_quiet()
        assert seqs(test, ledgers, "ada") == [2, 3]


def test_a_reset_releases_parked_keys_whose_heads_name_places_in_the_old_log(
    urls: dict[str, str],
) -> None:
    service, _ = accounts_service()
    failing.add(("ada", 1))
    with LandscapeTest(service, **urls) as test:
        test.send(Entry(account="ada", seq=1))
        test.send(Entry(account="ada", seq=2))
        test.run_until_quiet()
        store = test.stores["accounts"]
        assert [key for p in range(2) for key in store.parked("accounts", _input(p))] == ["ada"]
        reset_positions(store, service, plan_reset(test.log, store, service, ResetTarget.END))
        assert [key for p in range(2) for key in store.parked("accounts", _input(p))] == []


def _input(partition: int) -> TopicPartition:
    return TopicPartition("accounts.in", partition)
