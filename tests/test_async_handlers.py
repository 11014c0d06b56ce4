"""Coroutine handlers: those of different partitions run side by side, each partition's in
order, and the batch's effect is that of its handlers run one at a time."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from loglane import Event, PermanentError, RequestStatus, Service, Transaction
from loglane.metrics import RERUNS
from loglane.partitioner import partition_for
from loglane.testing import LandscapeTest
from tests.postgres import schemas, with_schema

PARTITIONS = 4


class Visit(Event):
    key: str
    seq: int = 0
    name: str = ""


class Counted(BaseModel):
    key: str
    visits: int


class Named(BaseModel):
    name: str
    key: str


def keys_one_per_partition(count: int = PARTITIONS) -> list[str]:
    """`count` keys, each in a partition of its own."""
    by_partition: dict[int, str] = {}
    for index in range(1000):
        key = f"k{index}"
        by_partition.setdefault(partition_for(key.encode(), PARTITIONS), key)
    return [by_partition[partition] for partition in sorted(by_partition)][:count]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The views' store: SQLite (None: LandscapeTest's own), or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
        return
    url = request.getfixturevalue("postgres_url")
    with schemas(url) as prefix:
        yield with_schema(url, prefix + "{service}")


def reruns(service: str) -> float:
    return RERUNS.labels(service, "Visit")._value.get()


def test_coroutine_handlers_of_different_partitions_run_side_by_side() -> None:
    service = Service("overlap", partitions=PARTITIONS)
    in_flight, peak, first_start = [0], [0], [0.0]

    @service.handles(Visit, key="key")
    async def visit(command: Visit, tx: Transaction) -> None:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        first_start[0] = first_start[0] or time.monotonic()
        # wait (up to 10 s after the first handler began) for all partitions to be in flight
        while peak[0] < PARTITIONS and time.monotonic() < first_start[0] + 10:
            await asyncio.sleep(0.001)
        in_flight[0] -= 1

    with LandscapeTest(service) as landscape:
        for key in keys_one_per_partition():
            landscape.send(Visit(key=key))
        landscape.run_until_quiet()
        assert peak[0] == PARTITIONS


def test_each_partitions_coroutine_handlers_run_in_order_while_partitions_interleave() -> None:
    service = Service("ordered", partitions=PARTITIONS)
    counted = service.view("counted", Counted, key="key")
    handled: dict[str, list[int]] = defaultdict(list)
    switches = [0, ""]

    @service.handles(Visit, key="key")
    async def visit(command: Visit, tx: Transaction) -> None:
        await asyncio.sleep(0.0005 * (command.seq % 3))  # partitions drift apart
        if switches[1] != command.key:
            switches[0], switches[1] = int(switches[0]) + 1, command.key
        handled[command.key].append(command.seq)
        row = tx[counted].get(command.key) or Counted(key=command.key, visits=0)
        assert row.visits == command.seq  # each key's commands in the order they were sent
        tx[counted].put(Counted(key=command.key, visits=row.visits + 1))

    keys = keys_one_per_partition()
    with LandscapeTest(service, batch_size=200) as landscape:
        for seq in range(25):
            for key in keys:
                landscape.send(Visit(key=key, seq=seq))
        landscape.run_until_quiet()
        assert {key: handled[key] for key in keys} == {key: list(range(25)) for key in keys}
        assert [landscape.view(counted).get(key) for key in keys] == [
            Counted(key=key, visits=25) for key in keys
        ]
        assert int(switches[0]) > len(keys)  # the partitions did interleave
        assert landscape.dead_letters("ordered") == []


def test_a_row_that_handlers_of_several_partitions_update_loses_no_update(
    db_url: str | None,
) -> None:
    service = Service("shared", partitions=PARTITIONS)
    counted = service.view("counted", Counted, key="key")

    @service.handles(Visit, key="key")
    async def visit(command: Visit, tx: Transaction) -> None:
        total = tx[counted].get("all") or Counted(key="all", visits=0)
        await asyncio.sleep(0)  # another partition's handler runs here, on the same row
        tx[counted].put(Counted(key="all", visits=total.visits + 1))

    before = reruns("shared")
    with LandscapeTest(service, db_url=db_url) as landscape:
        for seq in range(10):
            for key in keys_one_per_partition():
                landscape.send(Visit(key=key, seq=seq))
        landscape.run_until_quiet()
        assert landscape.view(counted).get("all") == Counted(key="all", visits=40)
        assert reruns("shared") > before  # the handlers did read the row under each other


def test_a_search_that_another_partitions_handler_changes_is_run_again(
    db_url: str | None,
) -> None:
    service = Service("unique", partitions=PARTITIONS)
    names = service.view("names", Named, key="key", indexes=["name"])

    @service.handles(Visit, key="key")
    async def claim(command: Visit, tx: Transaction) -> None:
        taken = tx[names].find(name=command.name, limit=1)
        await asyncio.sleep(0)
        if taken:
            tx.reject(f"{command.name} is taken")
        tx[names].put(Named(name=command.name, key=command.key))

    with LandscapeTest(service, db_url=db_url) as landscape:
        requests = [landscape.send(Visit(key=key, name="ada")) for key in keys_one_per_partition()]
        landscape.run_until_quiet()
        assert [row.name for row in landscape.view(names).all()] == ["ada"]
        outcomes = [landscape.outcome(request) for request in requests]
        statuses = sorted(outcome.status for outcome in outcomes if outcome is not None)
        assert statuses == [RequestStatus.DONE] + [RequestStatus.REJECTED] * (PARTITIONS - 1)


def test_a_coroutine_handler_that_fails_for_good_parks_its_key_while_others_go_on() -> None:
    service = Service("parks", partitions=PARTITIONS, park_keys=True)
    counted = service.view("counted", Counted, key="key")
    attempts: dict[str, int] = defaultdict(int)

    @service.handles(Visit, key="key")
    async def visit(command: Visit, tx: Transaction) -> None:
        attempts[f"{command.key}/{command.seq}"] += 1
        await asyncio.sleep(0)
        if command.seq == 1 and command.key == bad:
            raise PermanentError("this one cannot be handled")
        if command.seq == 0 and command.key == flaky and attempts[f"{flaky}/0"] == 1:
            raise ConnectionError("the other system blinked")
        row = tx[counted].get(command.key) or Counted(key=command.key, visits=0)
        tx[counted].put(Counted(key=command.key, visits=row.visits + 1))

    bad, flaky, *others = keys_one_per_partition()
    with LandscapeTest(service) as landscape:
        for seq in range(3):
            for key in (bad, flaky, *others):
                landscape.send(Visit(key=key, seq=seq))
        landscape.run_until_quiet()
        (dead,) = landscape.dead_letters("parks")
        assert dead.key == bad.encode()
        assert landscape.view(counted).get(bad) == Counted(key=bad, visits=1)  # 2 waits behind 1
        assert attempts[f"{bad}/2"] == 0
        assert attempts[f"{flaky}/0"] == 2  # retried once, then it passed
        for key in (flaky, *others):
            assert landscape.view(counted).get(key) == Counted(key=key, visits=3)


@pytest.mark.parametrize("awaits", [False, True])
def test_sync_and_coroutine_handlers_share_one_batch(awaits: bool) -> None:
    service = Service(f"mixed{int(awaits)}", partitions=PARTITIONS)
    counted = service.view("counted", Counted, key="key")

    class Other(Event):
        key: str

    @service.handles(Visit, key="key")
    async def visit(command: Visit, tx: Transaction) -> None:
        if awaits:
            await asyncio.sleep(0)
        row = tx[counted].get("all") or Counted(key="all", visits=0)
        tx[counted].put(Counted(key="all", visits=row.visits + 1))

    @service.handles(Other, key="key")
    def other(command: Other, tx: Transaction) -> None:
        row = tx[counted].get("all") or Counted(key="all", visits=0)
        tx[counted].put(Counted(key="all", visits=row.visits + 1))

    with LandscapeTest(service) as landscape:
        for key in keys_one_per_partition() * 5:
            landscape.send(Visit(key=key))
            landscape.send(Other(key=key))
        landscape.run_until_quiet()
        assert landscape.view(counted).get("all") == Counted(key="all", visits=40)
