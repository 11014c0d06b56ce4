"""Schema-driven fuzzing of the generated OpenAPI spec: no input yields a 5xx.

Every operation gets a bounded number of generated requests (valid and invalid bodies,
queries, headers and paths) against a real server with running workers; waits are capped
at one second so that a generated `wait` cannot stall the run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from loglane.urls import open_log
from tests.api.conftest import Stack


@pytest.fixture(scope="module")
def fuzzed_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="loglane-fuzz-") as folder:
        log = open_log(f"embedded:///{folder}/log.db?session_timeout=3&synchronous=normal")
        stack = Stack(Path(folder), log)
        try:
            server = stack.serve(max_wait=1.0, read_wait=1.0)
            stack.start_workers(on_commit=server.state.committed)
            yield server.url
        finally:
            stack.close()


def test_no_generated_request_gets_a_server_error(fuzzed_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # every generated route is fuzzed, not a lucky few

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        fuzz()
