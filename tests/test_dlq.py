"""Dead letters can be listed and re-driven once their cause is fixed, and apply once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from loglane import Event, RequestStatus, Retry, Service, Transaction
from loglane.dlq import dead_letters, redrive
from loglane.errors import BackendUnavailableError
from loglane.records import Message
from loglane.stores.base import Batch, Store
from loglane.testing import LandscapeTest
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
