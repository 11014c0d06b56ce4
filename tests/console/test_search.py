"""Searching a topic for a request's records: from the end back, no further than needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loglane.console.search import CHUNK, correlated_with, search
from loglane.logs.embedded import EmbeddedLog
from loglane.records import Message


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic("shop.out", 1)
    yield log
    log.close()


def event(event_id: str, correlation: str | None = None) -> Message:
    headers = [("ce_id", event_id.encode())]
    if correlation is not None:
        headers.append(("ce_correlationid", correlation.encode()))
    return Message("shop.out", b"k", b"{}", tuple(headers))


def test_a_request_is_found_by_its_correlation_id_or_else_by_its_own_id(log: EmbeddedLog) -> None:
    log.append([event("r1"), event("e1", "r1"), event("e2", "r2"), event("r1", "r0")])
    found = search(log, "shop.out", correlated_with("r1"), cutoff_ms=0)
    assert [record.header("ce_id") for record in found] == [b"r1", b"e1"]


def test_the_search_goes_back_only_until_it_passed_the_cutoff(log: EmbeddedLog) -> None:
    log.append([event(f"e{n}", "r") for n in range(CHUNK * 2 + 100)])
    everything = search(log, "shop.out", correlated_with("r"), cutoff_ms=0)
    recent = search(log, "shop.out", correlated_with("r"), cutoff_ms=2**62)
    assert len(everything) == CHUNK * 2 + 100
    assert [record.offset for record in recent] == list(range(CHUNK + 100, CHUNK * 2 + 100))
