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
from schemathesis.specs.openapi.checks import ignored_auth, status_code_conformance

from loglane.urls import open_log
from tests.api.conftest import Stack

TOKEN = "fuzzing-token"


def serve_fuzzed(tokens: tuple[str, ...] = ()) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="loglane-fuzz-") as folder:
        log = open_log(f"embedded:///{folder}/log.db?session_timeout=3&synchronous=normal")
        stack = Stack(Path(folder), log)
        try:
            server = stack.serve(max_wait=1.0, read_wait=1.0, tokens=tokens)
            stack.start_workers(on_commit=server.state.committed)
            yield server.url
        finally:
            stack.close()


@pytest.fixture(scope="module")
def fuzzed_url() -> Iterator[str]:
    yield from serve_fuzzed()


@pytest.fixture(scope="module")
def guarded_url() -> Iterator[str]:
    yield from serve_fuzzed(tokens=(TOKEN,))


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


def test_with_tokens_every_status_is_documented_and_auth_is_enforced_where_declared(
    guarded_url: str,
) -> None:
    """Each request is sent with the token (schemathesis also replays it without one and with
    a wrong one, to see auth enforced where declared) and once more without: every answer
    must be a status the document lists for the operation, its 401 included."""
    schema = schemathesis.openapi.from_url(
        f"{guarded_url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=10,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN}"},
                checks=[not_a_server_error, status_code_conformance, ignored_auth],
            )
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance])

        fuzz()
