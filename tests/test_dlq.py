"""Dead letters can be listed and re-driven once their cause is fixed, and apply once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from loglane import Event, RequestStatus, Retry, Service, Transaction
from loglane.dlq import (
    DeadLetterHandledError,
    LetterFilter,
    LetterStatus,
    UnknownDeadLetterError,
    dead_letters,
    drop,
    list_letters,
    pending_count,
    redrive,
    show,
)
from loglane.errors import BackendUnavailableError
from loglane.records import Message
from loglane.stores.base import Batch, Store
from loglane.testing import LandscapeTest
from loglane.urls import open_log
from loglane.worker import ensure_topics
from tests.postgres import schemas, with_schema
from tests.test_cli import loglane

broken = {"now": True}
fragile = Service("fragile", partitions=2, retry=Retry(attempts=1))
follower = Service("follower", partitions=2, retry=Retry(attempts=1))


class Keep(Event):
    item: str


class Stored(Event):
    item: str


class Item(BaseModel):
    item: str
    times: int


items = fragile.view("items", Item, key="item")
seen = follower.view("seen", Item, key="item")


@fragile.handles(Keep, key="item")
def keep_item(command: Keep, tx: Transaction) -> None:
    if broken["now"]:
        raise RuntimeError("the disk is on fire")
    current = tx[items].get(command.item)
    tx[items].put(Item(item=command.item, times=(current.times if current else 0) + 1))
    tx.emit(Stored(item=command.item))


class Toss(Event):
    item: str


@fragile.handles(Toss, key="item")
def toss_item(command: Toss, tx: Transaction) -> None:
    if broken["now"]:
        raise ValueError(f"no room for {command.item}")
    tx[items].put(Item(item=command.item, times=-1))


@follower.handles(Stored, source="fragile")
def follow(event: Stored, tx: Transaction) -> None:
    if broken.get("follower"):
        raise RuntimeError("follower is down")
    current = tx[seen].get(event.item)
    tx[seen].put(Item(item=event.item, times=(current.times if current else 0) + 1))


@pytest.fixture
def landscape(tmp_path: Path) -> Iterator[LandscapeTest]:
    broken.clear()
    broken["now"] = True
    with LandscapeTest(
        fragile,
        follower,
        log_url=f"embedded:///{tmp_path}/log.db",
        db_url=f"sqlite:///{tmp_path}/{{service}}.db",
    ) as test:
        yield test


@pytest.fixture
def postgres_landscape(postgres_url: str) -> Iterator[LandscapeTest]:
    broken.clear()
    broken["now"] = True
    with (
        schemas(postgres_url) as prefix,
        LandscapeTest(
            fragile, follower, db_url=with_schema(postgres_url, prefix + "{service}")
        ) as test,
    ):
        yield test


def test_a_redriven_command_completes_its_request_once_the_handler_is_fixed(
    landscape: LandscapeTest,
) -> None:
    request_id = landscape.send(Keep(item="a"))
    landscape.run_until_quiet()
    failed = landscape.outcome(request_id)
    assert failed is not None
    assert failed.status is RequestStatus.FAILED
    assert len(dead_letters(landscape.log, fragile)) == 1
    broken["now"] = False
    assert redrive(landscape.log, landscape.stores["fragile"], fragile) == 1
    landscape.run_until_quiet()
    done = landscape.outcome(request_id)
    assert done is not None
    assert done.status is RequestStatus.DONE
    assert landscape.view(items).get("a") == Item(item="a", times=1)
    assert redrive(landscape.log, landscape.stores["fragile"], fragile) == 0
    assert dead_letters(landscape.log, fragile, landscape.stores["fragile"]) == []


class CrashOnce:
    """A store whose first commit of a re-drive position fails, like a crash right then."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.crashed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def commit(self, batch: Batch) -> int | None:
        if not self.crashed:
            self.crashed = True
            raise BackendUnavailableError("killed between append and commit")
        return self.store.commit(batch)


def test_a_redrive_repeated_after_a_crash_is_applied_once(landscape: LandscapeTest) -> None:
    landscape.send(Keep(item="b"))
    landscape.run_until_quiet()
    broken["now"] = False
    with pytest.raises(BackendUnavailableError):
        redrive(landscape.log, CrashOnce(landscape.stores["fragile"]), fragile)  # type: ignore[arg-type]
    assert redrive(landscape.log, landscape.stores["fragile"], fragile) == 1
    landscape.run_until_quiet()
    assert landscape.view(items).get("b") == Item(item="b", times=1)


def test_copies_of_one_dead_letter_are_applied_once(landscape: LandscapeTest) -> None:
    request_id = landscape.send(Keep(item="charge"))
    landscape.run_until_quiet()
    (letter,) = dead_letters(landscape.log, fragile)
    # the outbox published again after a crash: a second copy, from the same source record
    landscape.log.append([Message(letter.topic, letter.key, letter.value, letter.headers)])
    assert len(dead_letters(landscape.log, fragile)) == 2
    broken["now"] = False
    assert redrive(landscape.log, landscape.stores["fragile"], fragile) == 2
    landscape.run_until_quiet()
    assert landscape.view(items).get("charge") == Item(item="charge", times=1)
    done = landscape.outcome(request_id)
    assert done is not None
    assert done.status is RequestStatus.DONE


def test_two_dead_letters_from_one_place_of_a_recreated_log_are_two_events(
    landscape: LandscapeTest,
) -> None:
    landscape.send(Keep(item="old"))
    landscape.run_until_quiet()
    (letter,) = dead_letters(landscape.log, fragile)
    # the record that failed at that place of the input after the log was recreated
    newer = Keep(item="new")
    headers = tuple(
        (name, f"{value.decode()}-2".encode() if name == "ce_id" else value)
        for name, value in letter.headers
    )
    landscape.log.append([Message(letter.topic, b"new", newer.model_dump_json().encode(), headers)])
    broken["now"] = False
    assert redrive(landscape.log, landscape.stores["fragile"], fragile) == 2
    landscape.run_until_quiet()
    assert landscape.view(items).get("old") == Item(item="old", times=1)
    assert landscape.view(items).get("new") == Item(item="new", times=1)


def test_a_redriven_record_that_fails_again_can_be_redriven_again(
    landscape: LandscapeTest,
) -> None:
    landscape.send(Keep(item="e"))
    landscape.run_until_quiet()
    assert redrive(landscape.log, landscape.stores["fragile"], fragile) == 1
    landscape.run_until_quiet()
    assert len(dead_letters(landscape.log, fragile, landscape.stores["fragile"])) == 1
    broken["now"] = False
    assert redrive(landscape.log, landscape.stores["fragile"], fragile) == 1
    landscape.run_until_quiet()
    assert landscape.view(items).get("e") == Item(item="e", times=1)


def test_a_dead_letter_from_another_services_output_returns_to_its_handler(
    landscape: LandscapeTest,
) -> None:
    broken["now"] = False
    broken["follower"] = True
    landscape.send(Keep(item="c"))
    landscape.run_until_quiet()
    assert landscape.view(seen).get("c") is None
    (letter,) = dead_letters(landscape.log, follower)
    assert letter.header("loglane_source") is not None
    broken["follower"] = False
    assert redrive(landscape.log, landscape.stores["follower"], follower) == 1
    landscape.run_until_quiet()
    assert landscape.view(seen).get("c") == Item(item="c", times=1)
    assert landscape.dead_letters("follower") == [letter]


def test_the_cli_lists_and_redrives_dead_letters(landscape: LandscapeTest, tmp_path: Path) -> None:
    landscape.send(Keep(item="d"))
    landscape.run_until_quiet()
    urls = [
        "--log",
        f"embedded:///{tmp_path}/log.db",
        "--db",
        f"sqlite:///{tmp_path}/{{service}}.db",
    ]
    listed = loglane("dlq", "list", "tests.test_dlq", "--service", "fragile", *urls)
    assert listed.returncode == 0, listed.stderr
    assert "the disk is on fire" in listed.stdout
    assert "1 dead letters" in listed.stdout
    redriven = loglane("dlq", "redrive", "tests.test_dlq", "--service", "fragile", *urls)
    assert redriven.returncode == 0, redriven.stderr
    assert "re-drove 1 dead letters to fragile.in" in redriven.stdout
    pending = loglane("dlq", "list", "tests.test_dlq", "--service", "fragile", *urls)
    assert "0 dead letters" in pending.stdout


def failed(landscape: LandscapeTest, *commands: Keep | Toss) -> list[str]:
    """Send commands of distinct keys that fail while the handlers are broken; the ids of
    their dead letters, in the commands' order."""
    for command in commands:
        landscape.send(command)
    landscape.run_until_quiet()
    ids = {letter.key: letter.id for letter in list_letters(landscape.log, fragile)}
    return [ids[command.item] for command in commands]


def test_a_dead_letter_shows_the_handlers_traceback_its_headers_and_payload(
    landscape: LandscapeTest,
) -> None:
    request_id = landscape.send(Keep(item="shown"))
    landscape.run_until_quiet()
    (listed,) = list_letters(landscape.log, fragile, landscape.stores["fragile"])
    letter = show(landscape.log, fragile, listed.id, landscape.stores["fragile"])
    assert letter.id == listed.id == f"{letter.record.partition}:{letter.record.offset}"
    assert letter.status is LetterStatus.PENDING
    assert letter.reason == "handler failed 1 times: RuntimeError('the disk is on fire')"
    assert letter.traceback is not None
    assert letter.traceback.startswith("Traceback (most recent call last):")
    assert 'raise RuntimeError("the disk is on fire")' in letter.traceback
    assert "worker.py" not in letter.traceback
    assert letter.type == "Keep"
    assert letter.key == "shown"
    assert letter.request_id == request_id
    assert letter.failed_at is not None
    assert letter.failed_at.startswith("fragile.in:")
    assert letter.headers["ce_source"] == "loglane"
    assert Keep.model_validate_json(letter.payload) == Keep(item="shown")


def test_an_unknown_or_malformed_id_is_a_clear_error(landscape: LandscapeTest) -> None:
    (known,) = failed(landscape, Keep(item="x"))
    partition = known.split(":")[0]
    with pytest.raises(UnknownDeadLetterError, match=f"no dead letter {partition}:99"):
        show(landscape.log, fragile, f"{partition}:99")
    with pytest.raises(UnknownDeadLetterError, match="ids are partition:offset"):
        show(landscape.log, fragile, "seven")
    with pytest.raises(UnknownDeadLetterError):
        drop(landscape.log, landscape.stores["fragile"], fragile, "7:0")


def test_a_dropped_letter_is_no_longer_listed_and_never_redriven(landscape: LandscapeTest) -> None:
    store = landscape.stores["fragile"]
    dropped, kept = failed(landscape, Keep(item="poison"), Keep(item="fine"))
    assert drop(landscape.log, store, fragile, dropped).status is LetterStatus.DROPPED
    assert [letter.id for letter in list_letters(landscape.log, fragile, store)] == [kept]
    assert show(landscape.log, fragile, dropped, store).status is LetterStatus.DROPPED
    with pytest.raises(DeadLetterHandledError, match="dropped already"):
        drop(landscape.log, store, fragile, dropped)
    with pytest.raises(DeadLetterHandledError, match="dropped already"):
        redrive(landscape.log, store, fragile, dropped)
    broken["now"] = False
    assert redrive(landscape.log, store, fragile) == 1
    landscape.run_until_quiet()
    assert landscape.view(items).get("fine") == Item(item="fine", times=1)
    assert landscape.view(items).get("poison") is None
    statuses = {
        letter.id: letter.status
        for letter in list_letters(landscape.log, fragile, store, include_handled=True)
    }
    assert statuses == {dropped: LetterStatus.DROPPED, kept: LetterStatus.REDRIVEN}
    assert redrive(landscape.log, store, fragile) == 0


def test_one_letter_can_be_redriven_by_its_id(landscape: LandscapeTest) -> None:
    store = landscape.stores["fragile"]
    first, second = failed(landscape, Keep(item="one"), Keep(item="two"))
    broken["now"] = False
    assert redrive(landscape.log, store, fragile, second) == 1
    landscape.run_until_quiet()
    assert landscape.view(items).get("two") == Item(item="two", times=1)
    assert landscape.view(items).get("one") is None
    assert [letter.id for letter in list_letters(landscape.log, fragile, store)] == [first]
    with pytest.raises(DeadLetterHandledError, match="redriven already"):
        redrive(landscape.log, store, fragile, second)
    assert redrive(landscape.log, store, fragile) == 1
    landscape.run_until_quiet()
    assert landscape.view(items).get("one") == Item(item="one", times=1)
    assert landscape.view(items).get("two") == Item(item="two", times=1)


def test_dead_letters_are_filtered_by_type_key_and_error(landscape: LandscapeTest) -> None:
    store = landscape.stores["fragile"]
    kept, tossed, other = failed(landscape, Keep(item="a"), Toss(item="b"), Toss(item="c"))

    def ids(where: LetterFilter) -> list[str]:
        return [letter.id for letter in list_letters(landscape.log, fragile, store, where=where)]

    assert sorted(ids(LetterFilter(type="Toss"))) == sorted([tossed, other])
    assert ids(LetterFilter(key="a")) == [kept]
    assert ids(LetterFilter(error="NO ROOM FOR C")) == [other]
    assert sorted(ids(LetterFilter(error="toss_item"))) == sorted([tossed, other])  # traceback
    assert ids(LetterFilter(type="Toss", key="a")) == []


def test_a_filtered_redrive_posts_only_the_matching_letters(landscape: LandscapeTest) -> None:
    store = landscape.stores["fragile"]
    kept, _ = failed(landscape, Keep(item="k"), Toss(item="t"))
    broken["now"] = False
    assert redrive(landscape.log, store, fragile, where=LetterFilter(type="Toss")) == 1
    landscape.run_until_quiet()
    assert landscape.view(items).get("t") == Item(item="t", times=-1)
    assert landscape.view(items).get("k") is None
    assert [letter.id for letter in list_letters(landscape.log, fragile, store)] == [kept]


@pytest.mark.postgres
def test_drops_and_single_redrives_are_kept_in_postgresql(
    postgres_landscape: LandscapeTest,
) -> None:
    landscape = postgres_landscape
    store = landscape.stores["fragile"]
    dropped, single, rest = failed(landscape, Keep(item="p1"), Keep(item="p2"), Keep(item="p3"))
    drop(landscape.log, store, fragile, dropped)
    broken["now"] = False
    assert redrive(landscape.log, store, fragile, single) == 1
    assert [letter.id for letter in list_letters(landscape.log, fragile, store)] == [rest]
    assert redrive(landscape.log, store, fragile) == 1
    landscape.run_until_quiet()
    assert landscape.view(items).get("p1") is None
    assert landscape.view(items).get("p2") == Item(item="p2", times=1)
    assert landscape.view(items).get("p3") == Item(item="p3", times=1)


def test_the_pending_count_leaves_out_dropped_and_redriven_letters(
    landscape: LandscapeTest,
) -> None:
    store = landscape.stores["fragile"]
    dropped, redriven, _ = failed(landscape, Keep(item="c1"), Keep(item="c2"), Keep(item="c3"))
    assert pending_count(landscape.log, store, fragile) == 3
    drop(landscape.log, store, fragile, dropped)
    redrive(landscape.log, store, fragile, redriven)
    assert pending_count(landscape.log, store, fragile) == 1
    assert redrive(landscape.log, store, fragile) == 1
    landscape.run_until_quiet()  # the re-driven letters fail again: two new dead letters
    assert pending_count(landscape.log, store, fragile) == 2
    assert len(list_letters(landscape.log, fragile, store, include_handled=True)) == 5


def test_what_was_handled_in_a_recreated_dlq_does_not_hide_its_new_letters(
    landscape: LandscapeTest, tmp_path: Path
) -> None:
    store = landscape.stores["fragile"]
    dropped, _ = failed(landscape, Keep(item="old1"), Keep(item="old2"))
    old = show(landscape.log, fragile, dropped)
    drop(landscape.log, store, fragile, dropped)
    assert redrive(landscape.log, store, fragile) == 1
    recreated = open_log(f"embedded:///{tmp_path}/recreated.db")
    try:
        ensure_topics(recreated, [fragile])
        record = old.record
        recreated.append([Message(record.topic, record.key, record.value, record.headers)])
        (letter,) = list_letters(recreated, fragile, store)
        assert letter.id == dropped  # the same place as the dropped letter...
        assert letter.record.timestamp_ms != record.timestamp_ms  # ...but another letter
        assert letter.status is LetterStatus.PENDING
        assert pending_count(recreated, store, fragile) == 1
    finally:
        recreated.close()
