"""PostgreSQL restarted under a running worker process: it backs off, resumes, loses nothing.

The run is 50,000 commands (1,000 accounts x 50 deposits); LOGLANE_PG_RESTART_COMMANDS sets
another count (a multiple of 1,000).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from loglane.commands import command_message
from loglane.envelope import output_event_id
from loglane.records import TopicPartition
from loglane.worker import ensure_topics
from tests.apps.ledger import accounts, deposits, landscape, ledger, tallies
from tests.conftest import eventually
from tests.postgres import PostgresStack, PrivateServer
from tests.processes import WorkerProcess
from tests.test_crash_recovery import caught_up

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ACCOUNTS = 1000
PER_ACCOUNT = int(os.environ.get("LOGLANE_PG_RESTART_COMMANDS", "50000")) // ACCOUNTS


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    """A server of this test's own: restarting the shared one would disturb other tests."""
    server = PrivateServer()
    yield server
    server.close()


def append_deposits(stack: PostgresStack) -> list[str]:
    log = stack.log()
    ensure_topics(log, list(landscape))
    messages = [command_message(ledger, d) for d in deposits(ACCOUNTS, PER_ACCOUNT)]
    for start in range(0, len(messages), 1000):
        log.append([message for _, message in messages[start : start + 1000]])
    log.close()
    return [request_id for request_id, _ in messages]


def ledger_progress(stack: PostgresStack) -> int:
    store = stack.store("ledger")
    try:
        positions = store.positions("ledger")
    finally:
        store.close()
    return sum(offset for tp, offset in positions.items() if tp.topic == "ledger.in")


def assert_folded_once(stack: PostgresStack, request_ids: list[str]) -> None:
    """Each account holds the fold of its deposits, each applied once, in order; every output
    event was published."""
    total = PER_ACCOUNT * (PER_ACCOUNT + 1) // 2
    ledger_store, audit_store = stack.store("ledger"), stack.store("audit")
    try:
        for a in range(ACCOUNTS):
            account = ledger_store.get(accounts, f"acct-{a}")
            assert account is not None
            assert (account.balance, account.applied, account.out_of_order) == (
                total,
                PER_ACCOUNT,
                0,
            )
            tally = audit_store.get(tallies, f"acct-{a}")
            assert tally is not None
            assert (tally.events, tally.out_of_order) == (PER_ACCOUNT, 0)
    finally:
        ledger_store.close()
        audit_store.close()
    log = stack.log()
    published = {
        dict(record.headers)["ce_id"].decode()
        for p, offsets in log.offsets("ledger.out").items()
        for record in log.read(TopicPartition("ledger.out", p), 0, offsets.end)
    }
    dead = sum(o.end for dlq in ("ledger.dlq", "audit.dlq") for o in log.offsets(dlq).values())
    log.close()
    assert published == {output_event_id("ledger", rid, 0) for rid in request_ids}
    assert dead == 0


def test_a_postgresql_restart_mid_run_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, server: PrivateServer
) -> None:
    stack = PostgresStack(tmp_path, url=server.url)
    request_ids = append_deposits(stack)
    worker = WorkerProcess(stack, "run", "tests.apps.ledger")
    try:
        eventually(
            lambda: (
                ledger_progress(stack) >= len(request_ids) // 4 or worker.process.poll() is not None
            ),
            timeout=300,
            step=0.1,
            message="a quarter of the deposits applied",
        )
        assert ledger_progress(stack) < len(request_ids), "the run ended before the restart"
        server.stop()
        server.start()
        eventually(
            lambda: caught_up(stack),
            timeout=600,
            step=0.5,
            message="the landscape caught up after the restart",
        )
        assert worker.stop() == 0, worker.describe()
    finally:
        if worker.process.poll() is None:
            worker.kill()
    assert "unavailable" in worker.output.read_text(), "the worker never noticed the restart"
    assert_folded_once(stack, request_ids)
