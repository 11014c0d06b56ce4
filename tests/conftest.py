"""Shared helpers for the whole suite."""

from __future__ import annotations

import time
from collections.abc import Callable

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


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL server for the tests marked `postgres` (see tests/postgres.py)."""
    from tests.postgres import server_url

    return server_url()


pytest_plugins = ["tests.kafka_broker"]
