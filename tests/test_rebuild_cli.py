"""`loglane rebuild` as a user runs it: the progress it shows, and what it refuses."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from loglane.examples.shop import (
    CreateCustomer,
    PlaceOrder,
    customers,
    known_customers,
    orders,
    orders_view,
)
from loglane.logs.embedded import EmbeddedLog
from loglane.records import TopicPartition
from loglane.stores.sqlite import SQLiteStore
from loglane.testing import LandscapeTest
from loglane.views import View
from tests.apps.ledger import Account, Deposit, accounts, audit, deposits, ledger
from tests.conftest import eventually
from tests.processes import ROOT, child_environment


def loglane(*args: str, stdin: int = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loglane", *args],
        cwd=ROOT,
        env=child_environment(COLUMNS="200"),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


REBUILD_LEDGER = ("rebuild", "tests.apps.ledger", "--service", "ledger")


def urls(folder: Path) -> list[str]:
    return ["--log", f"embedded:///{folder}/log.db", "--db", f"sqlite:///{folder}/{{service}}.db"]


def applied(folder: Path, view: View[Account], send: list[Deposit] | None = None) -> int:
    """Send `send` (if any) and run the ledger until quiet; the sum of `applied` over its
    accounts."""
    _, log, _, db = urls(folder)
    with LandscapeTest(ledger, audit, log_url=log, db_url=db) as test:
        for deposit in send or []:
            test.send(deposit)
        test.run_until_quiet()
        store = test.stores["ledger"]
        return sum(account.applied for account in store.query(view, limit=10_000))


def test_rebuild_shows_events_rate_and_time_left_then_where_it_swapped(tmp_path: Path) -> None:
    assert applied(tmp_path, accounts, deposits(20, 10)) == 200
    result = loglane(
        "rebuild", "tests.apps.ledger", "--service", "ledger", "--yes", *urls(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("replayed 0/200 events, "), lines
    assert " ETA " in lines[0], lines
    assert lines[-2].startswith("swapping at 200/200 events, "), lines
    assert lines[-1].startswith("rebuilt accounts of ledger: 200 events replayed in "), lines
    assert sum(int(offset) for offset in re.findall(r"ledger\.in\[\d\]@(\d+)", lines[-1])) == 200
    assert not (tmp_path / "ledger.rebuild.db").exists()


def test_rebuild_at_a_terminal_draws_a_progress_bar(tmp_path: Path) -> None:
    assert applied(tmp_path, accounts, deposits(20, 10)) == 200
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "loglane", *REBUILD_LEDGER, "--yes", *urls(tmp_path)],
            cwd=ROOT,
            env=child_environment(COLUMNS="200", TERM="xterm"),
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(terminal)
    shown = b""
    while chunk := _read(controller):
        shown += chunk
    os.close(controller)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))  # no colours
    assert "━" in text  # the bar
    assert "200/200 events" in text
    assert "/s" in text
    assert "rebuilt accounts of ledger" in text


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal closed: the child exited
        return b""


def test_rebuild_refuses_when_retention_dropped_records_it_needs(tmp_path: Path) -> None:
    """The first deposits aged out of ledger.in; a rebuild from what remains would miss
    them, so it refuses unless told to accept the gap, and then rebuilds from the rest."""
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic("ledger.in", ledger.partitions, retention_ms=60_000)
    log.close()
    assert applied(tmp_path, accounts, [Deposit(account="a", seq=1, amount=5)]) == 1
    written = time.time()
    eventually(lambda: time.time() - written > 0.002, message="a later millisecond")
    assert applied(tmp_path, accounts, [Deposit(account="b", seq=1, amount=7)]) == 2
    log = EmbeddedLog(tmp_path / "log.db")
    (record,) = [
        record
        for partition in range(ledger.partitions)
        for record in log.read(TopicPartition("ledger.in", partition), 0, 10)
        if record.key == b"b"
    ]
    assert log.enforce_retention(now_ms=record.timestamp_ms + 60_000) == 1  # a's deposit
    log.close()

    refused = loglane(
        "rebuild", "tests.apps.ledger", "--service", "ledger", "--yes", *urls(tmp_path)
    )
    assert refused.returncode == 2
    assert "the log no longer holds every record ledger needs replayed" in refused.stderr
    assert "needs offset 0, the log starts at 1" in refused.stderr
    assert "--accept-gap" in refused.stderr
    assert not (tmp_path / "ledger.rebuild.db").exists()
    assert applied(tmp_path, accounts) == 2  # the live view as it was

    accepted = loglane(
        "rebuild",
        "tests.apps.ledger",
        "--service",
        "ledger",
        "--yes",
        "--accept-gap",
        *urls(tmp_path),
    )
    assert accepted.returncode == 0, accepted.stderr
    assert applied(tmp_path, accounts) == 1  # only b's deposit is left to fold


def test_rebuild_names_the_views_there_are_and_asks_before_it_starts(tmp_path: Path) -> None:
    unknown = loglane(
        "rebuild", "tests.apps.ledger", "--service", "ledger", "--view", "nope", *urls(tmp_path)
    )
    assert unknown.returncode == 2
    assert "ledger has no view 'nope'; its views: accounts" in unknown.stderr
    unasked = loglane("rebuild", "tests.apps.ledger", "--service", "ledger", *urls(tmp_path))
    assert unasked.returncode == 2
    assert "pass --yes to rebuild without asking" in unasked.stderr


def test_a_backup_put_in_the_shadows_place_lets_a_rebuild_start_after_the_gap(
    tmp_path: Path,
) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic("ledger.in", ledger.partitions, retention_ms=60_000)
    log.close()
    assert applied(tmp_path, accounts, [Deposit(account="a", seq=1, amount=5)]) == 1
    with (
        sqlite3.connect(tmp_path / "ledger.db") as live,
        sqlite3.connect(tmp_path / "ledger.rebuild.db") as shadow,
    ):
        live.backup(shadow)  # the views are right here
    written = time.time()
    eventually(lambda: time.time() - written > 0.002, message="a later millisecond")
    assert applied(tmp_path, accounts, [Deposit(account="b", seq=1, amount=7)]) == 2
    log = EmbeddedLog(tmp_path / "log.db")
    assert log.enforce_retention(now_ms=int(written * 1000) + 60_001) == 1  # a's deposit
    log.close()

    result = loglane(*REBUILD_LEDGER, "--yes", *urls(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "rebuilt accounts of ledger: 1 events replayed" in result.stdout
    assert applied(tmp_path, accounts) == 2


def test_only_the_view_named_is_swapped_and_a_follower_replays_its_sources(
    tmp_path: Path,
) -> None:
    """`orders` follows `customers.out`: its replay learns the customers again in the shadow,
    so the orders it accepted are accepted again, and only `orders` is swapped in."""
    _, log_url, _, db_url = urls(tmp_path)
    with LandscapeTest(customers, orders, log_url=log_url, db_url=db_url) as test:
        for name in ("ada", "bob"):
            test.send(CreateCustomer(customer_id=name, name=name.title()))
        test.run_until_quiet()
        for number in range(5):
            order = PlaceOrder(order_id=f"o{number}", customer_id="ada", amount_cents=100)
            test.send(order)
        test.run_until_quiet()
    with sqlite3.connect(tmp_path / "orders.db") as db:  # a bug lost them all
        db.execute("DELETE FROM orders")
        db.execute("DELETE FROM known_customers")
    published = log_ends(tmp_path, "orders.out"), log_ends(tmp_path, "customers.out")

    result = loglane(
        "rebuild",
        "loglane.examples.shop",
        "--service",
        "orders",
        "--view",
        "orders",
        "--yes",
        *urls(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "rebuilt orders of orders: 7 events replayed" in result.stdout
    store = SQLiteStore(tmp_path / "orders.db")
    try:
        rebuilt = store.query(orders_view, where={"customer_id": "ada"})
        assert [order.order_id for order in rebuilt] == [f"o{number}" for number in range(5)]
        assert store.query(known_customers) == []  # not named, so not swapped
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "orders.db") as db:
        indexes = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'orders'"
        ).fetchall()
    assert ("orders_by_customer_id",) in indexes
    assert (log_ends(tmp_path, "orders.out"), log_ends(tmp_path, "customers.out")) == published


def log_ends(folder: Path, topic: str) -> int:
    log = EmbeddedLog(folder / "log.db")
    try:
        return sum(offsets.end for offsets in log.offsets(topic).values())
    finally:
        log.close()
