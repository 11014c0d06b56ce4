"""Shared helpers for the whole suite."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest


def eventually(
    condition: Callable[[], bool],
    *,
    timeout: float = 60.0,
    step: float = 0.01,
    message: str = "condition",
) -> None:
    """Wait until `condition()` holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not hold within {timeout}s")
        time.sleep(step)


def while_progressing(
    condition: Callable[[], bool],
    progress: Callable[[], object],
    *,
    stalled_after: float = 120.0,
    step: float = 0.5,
    message: str = "condition",
) -> None:
    """Wait until `condition()` holds, for as long as `progress()` keeps changing.

    For waits whose length depends on the machine's load, such as a landscape draining its
    backlog: the test fails only when `progress()` (a count, an offset sum; any comparable
    value) has stayed the same for `stalled_after` seconds, however long the whole wait takes.
    Finite work stops moving, so a condition that never holds still fails.
    """
    last = progress()
    moved_at = time.monotonic()
    while not condition():
        now = progress()
        if now != last:
            last, moved_at = now, time.monotonic()
        elif time.monotonic() - moved_at > stalled_after:
            raise AssertionError(
                f"{message} did not hold, and progress stalled at {now!r:.200} for {stalled_after}s"
            )
        time.sleep(step)


def announce(config: pytest.Config, line: str) -> None:
    """Print `line` on the terminal as it happens, past pytest's capturing: which servers a
    session starts and stops, and how long that took."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A PostgreSQL server for the tests marked `postgres` (see tests/postgres.py)."""
    from tests.postgres import session_server

    with session_server(lambda line: announce(request.config, line)) as url:
        yield url


pytest_plugins = ["tests.kafka_broker"]
