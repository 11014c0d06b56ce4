"""The `loglane` command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loglane.examples.shop import customers_view
from tests.conftest import eventually
from tests.processes import ROOT, Stack, WorkerProcess


def loglane(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "loglane", *args],
        cwd=cwd,
        env=env,
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
