"""The `loglane` command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loglane.commands import post
from loglane.errors import StaleBatchError
from loglane.examples.shop import customers_view
from loglane.records import TopicPartition
from loglane.reset import ResetTarget, plan_reset, reset_positions
from loglane.stores.base import Batch
from loglane.stores.sqlite import SQLiteStore
from loglane.testing import LandscapeTest
from loglane.urls import open_log
from loglane.worker import ensure_topics
from tests.apps.ledger import Deposit, accounts, audit, ledger, tallies
from tests.conftest import eventually
from tests.processes import ROOT, Stack, WorkerProcess, child_environment


def loglane(
    *args: str, cwd: Path = ROOT, stdin: int = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; its stdin is no terminal unless the test passes one."""
    return subprocess.run(
        [sys.executable, "-m", "loglane", *args],
        cwd=cwd,
        env=child_environment(COLUMNS="200"),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nosuch://x", "unknown log scheme 'nosuch'"),
        ("embedded://relative", "write embedded:///relative/path"),
        ("embedded:///x.db?bogus=1", "unknown option 'bogus'"),
    ],
)
def test_a_bad_log_url_gets_one_clear_line(url: str, says: str, tmp_path: Path) -> None:
    result = loglane("status", "tests.apps.ledger", "--log", url, cwd=tmp_path)
    assert result.returncode == 2
    assert says in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_an_unknown_service_is_named_with_the_ones_that_exist(tmp_path: Path) -> None:
    result = loglane(
        "worker",
        "tests.apps.ledger",
        "--service",
        "nope",
        "--log",
        f"embedded:///{tmp_path}/log.db",
    )
    assert result.returncode == 2
    assert "no service named 'nope'; this landscape has ledger, audit" in result.stderr


def test_the_demo_runs_the_shop_and_reports_every_command(tmp_path: Path) -> None:
    result = loglane("demo", "--commands", "400", "--dir", str(tmp_path / "demo"), "--no-serve")
    assert result.returncode == 0, result.stderr
    assert "customers" in result.stdout
    assert "400 commands handled" in result.stdout
    status = loglane(
        "status",
        "loglane.examples.shop",
        "--log",
        f"embedded:///{tmp_path}/demo/log.db",
        "--db",
        f"sqlite:///{tmp_path}/demo/{{service}}.db",
    )
    assert status.returncode == 0, status.stderr
    assert "customers.in[0]" in status.stdout
    assert "dead letters  customers: 0  orders: 0" in status.stdout


def test_a_command_sent_from_the_cli_is_handled_by_run(tmp_path: Path) -> None:
    log = f"embedded:///{tmp_path}/log.db"
    sent = loglane(
        "send",
        "loglane.examples.shop",
        "CreateCustomer",
        '{"customer_id": "c1", "name": "Ada"}',
        "--log",
        log,
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["topic"] == "customers.in"
    invalid = loglane(
        "send", "loglane.examples.shop", "CreateCustomer", '{"name": ""}', "--log", log
    )
    assert invalid.returncode == 2
    assert "invalid CreateCustomer" in invalid.stderr
    stack = Stack(tmp_path)
    worker = WorkerProcess(stack, "run", "loglane.examples.shop", "--port", "0")
    store = stack.store("customers")
    try:
        eventually(lambda: store.get(customers_view, "c1") is not None, message="c1 was created")
    finally:
        assert worker.stop() == 0, worker.describe()
        store.close()


@pytest.fixture
def recreated(tmp_path: Path) -> list[str]:
    """The ledger's log and store URLs after the log was recreated under the store: the old
    log took 5 deposits each to a, b and c, the new one holds one deposit of 100 to each."""
    urls = f"embedded:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/{{service}}.db"
    with LandscapeTest(ledger, audit, log_url=urls[0], db_url=urls[1]) as old:
        for seq in range(1, 6):
            for account in "abc":
                old.send(Deposit(account=account, seq=seq, amount=1))
        old.run_until_quiet()
    for path in tmp_path.glob("log.db*"):
        path.unlink()
    log = open_log(urls[0])
    ensure_topics(log, [ledger, audit])
    for account in "abc":
        post(log, ledger, Deposit(account=account, seq=6, amount=100))
    log.close()
    return ["--log", urls[0], "--db", urls[1]]


def ledger_positions(tmp_path: Path) -> dict[TopicPartition, int]:
    store = SQLiteStore(tmp_path / "ledger.db")
    try:
        return store.positions("ledger")
    finally:
        store.close()


def test_reset_lets_workers_read_a_recreated_log_from_its_start(
    recreated: list[str], tmp_path: Path
) -> None:
    for service, partitions in (("ledger", 4), ("audit", 8)):  # audit follows ledger.out
        result = loglane("reset", "tests.apps.ledger", "--service", service, "--yes", *recreated)
        assert result.returncode == 0, result.stderr
        assert "stored positions lie beyond the log's end" in result.stdout
        assert f"reset {partitions} positions of {service} to the log's start" in result.stdout
    assert set(ledger_positions(tmp_path).values()) == {0}
    log, db = recreated[1], recreated[3]
    with LandscapeTest(ledger, audit, log_url=log, db_url=db) as test:
        test.run_until_quiet()
        for account in "abc":
            assert test.view(accounts).get(account).balance == 105  # type: ignore[union-attr]
            assert test.view(tallies).get(account).events == 6  # type: ignore[union-attr]


def test_reset_to_the_end_leaves_what_the_log_holds_unread(
    recreated: list[str], tmp_path: Path
) -> None:
    result = loglane(
        "reset", "tests.apps.ledger", "--service", "ledger", "--to", "end", "--yes", *recreated
    )
    assert result.returncode == 0, result.stderr
    assert sum(ledger_positions(tmp_path).values()) == 3
    with LandscapeTest(ledger, log_url=recreated[1], db_url=recreated[3]) as test:
        test.run_until_quiet()
        assert test.view(accounts).get("a").balance == 5  # type: ignore[union-attr]


def test_reset_without_a_terminal_or_yes_shows_the_positions_and_changes_nothing(
    recreated: list[str], tmp_path: Path
) -> None:
    before = ledger_positions(tmp_path)
    result = loglane("reset", "tests.apps.ledger", "--service", "ledger", *recreated)
    assert result.returncode == 2
    assert "no terminal to ask on; pass --yes to reset without asking" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "log end" in result.stdout
    assert ledger_positions(tmp_path) == before


@pytest.mark.parametrize(("answer", "resets"), [("y", True), ("n", False)])
def test_reset_at_a_terminal_resets_only_when_the_user_says_yes(
    recreated: list[str], tmp_path: Path, answer: str, resets: bool
) -> None:
    before = ledger_positions(tmp_path)
    controller, terminal = os.openpty()
    try:
        os.write(controller, f"{answer}\n".encode())
        result = loglane(
            "reset", "tests.apps.ledger", "--service", "ledger", *recreated, stdin=terminal
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert "Stop every worker of ledger first. Reset 4 positions" in result.stdout
    assert result.returncode == (0 if resets else 1), result.stderr
    after = ledger_positions(tmp_path)
    assert (set(after.values()) == {0}) if resets else (after == before)


def test_a_reset_stops_when_a_worker_commits_meanwhile(
    recreated: list[str], tmp_path: Path
) -> None:
    log = open_log(recreated[1])
    store = SQLiteStore(tmp_path / "ledger.db")
    try:
        plan = plan_reset(log, store, ledger, ResetTarget.START)
        *_, moved = (row for row in plan if row.stored)  # the last one the reset would write
        assert moved.stored is not None
        store.commit(
            Batch(
                service="ledger",
                source=moved.partition,
                expected_position=moved.stored,
                position=moved.stored + 1,
            )
        )
        with pytest.raises(StaleBatchError, match="stop every worker of 'ledger'"):
            reset_positions(store, ledger, plan)
        assert store.positions("ledger")[moved.partition] == moved.stored + 1
    finally:
        store.close()
        log.close()
