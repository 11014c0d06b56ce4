"""Group commit: requests that share one write each get their own result."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from loglane.api.appending import append_each
from loglane.api.grouping import GroupWriter
from loglane.errors import BackendUnavailableError, ConfigurationError
from loglane.logs.base import Log
from loglane.records import Message, Position, TopicPartition
from loglane.urls import open_log


def submit_together(writer: GroupWriter[str, str], items: list[str]) -> list[str]:
    """What each submit came to: its result, or `raised <error>`."""

    async def submit(item: str) -> str:
        try:
            return await writer.submit(item)
        except Exception as exc:
            return f"raised {exc!r}"

    async def run() -> list[str]:
        return await asyncio.gather(*map(submit, items))

    return asyncio.run(run())


def test_an_item_that_failed_gets_its_error_and_the_rest_of_its_group_their_results() -> None:
    groups: list[list[str]] = []

    def write(items: Sequence[str]) -> list[str | Exception]:
        groups.append(list(items))
        return [ValueError(f"{item} failed") if item == "b" else item.upper() for item in items]

    outcomes = submit_together(GroupWriter(write), ["a", "b", "c"])

    assert groups == [["a", "b", "c"]]  # one write for the three
    assert outcomes == ["A", "raised ValueError('b failed')", "C"]


def test_a_write_that_raises_fails_every_item_of_its_group() -> None:
    def write(items: Sequence[str]) -> list[str | Exception]:
        raise BackendUnavailableError("the log is down")

    outcomes = submit_together(GroupWriter(write), ["a", "b"])

    assert outcomes == ["raised BackendUnavailableError('the log is down')"] * 2


class PartlyStoringLog:
    """Stores every message of a group but the poisoned ones, then fails the whole call,
    as Kafka's producer does when one delivery of many fails."""

    def __init__(self, log: Log, poisoned: bytes) -> None:
        self.log = log
        self.poisoned = poisoned
        self.calls = 0

    def append(self, messages: Sequence[Message]) -> list[Position]:
        self.calls += 1
        positions = self.log.append([m for m in messages if m.value != self.poisoned])
        if len(positions) < len(messages):
            raise ConfigurationError("a record is larger than Kafka accepts")
        return positions


class DownLog:
    def __init__(self) -> None:
        self.calls = 0

    def append(self, messages: Sequence[Message]) -> list[Position]:
        self.calls += 1
        raise BackendUnavailableError("Kafka did not confirm the records")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    log = open_log(f"embedded:///{tmp_path}/log.db")
    log.create_topic("t.in", 1)
    yield log
    log.close()


def message(value: bytes) -> Message:
    return Message("t.in", b"k", value, ())


def test_when_a_group_append_fails_only_the_message_at_fault_gets_the_error(log: Log) -> None:
    kafka_like = PartlyStoringLog(log, poisoned=b"too large")

    outcomes = append_each(
        kafka_like,  # type: ignore[arg-type]
        [message(b"first"), message(b"too large"), message(b"third")],
    )

    assert isinstance(outcomes[0], Position)
    assert isinstance(outcomes[1], ConfigurationError)
    assert isinstance(outcomes[2], Position)
    stored = [record.value for record in log.read(TopicPartition("t.in", 0), 0, 10)]
    # the failed group stored two; each was appended again alone, a copy with the same id
    assert stored == [b"first", b"third", b"first", b"third"]


def test_when_the_log_is_down_a_failed_group_is_tried_alone_once_not_per_message() -> None:
    down = DownLog()

    outcomes = append_each(down, [message(b"a"), message(b"b"), message(b"c")])  # type: ignore[arg-type]

    assert all(isinstance(outcome, BackendUnavailableError) for outcome in outcomes)
    assert down.calls == 2
