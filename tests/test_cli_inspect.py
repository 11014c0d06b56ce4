"""The CLI for people and scripts: JSON output, the DLQ by id, rows, requests and waits."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from loglane.cli import app
from loglane.dlq import DeadLetter, list_letters
from loglane.examples.shop import CreateCustomer, PlaceOrder, customers, orders
from loglane.testing import LandscapeTest
from tests.processes import ROOT, child_environment
from tests.test_dlq import Keep, broken, follower, fragile

runner = CliRunner()


class Cli:
    """The `loglane` app, run in-process against one landscape's log and stores."""

    def __init__(self, app_path: str, tmp_path: Path) -> None:
        self.app_path = app_path
        self.log = ["--log", f"embedded:///{tmp_path}/log.db"]
        self.db = ["--db", f"sqlite:///{tmp_path}/{{service}}.db"]

    def __call__(self, *args: str, columns: int = 200, log: bool = True) -> Result:
        # the app path goes right after the command's name(s), as a user types it
        split = 2 if args[0] == "dlq" else 1
        argv = [*args[:split], self.app_path, *args[split:], *(self.log if log else []), *self.db]
        return runner.invoke(app, argv, env={"COLUMNS": str(columns)})

    def json(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[LandscapeTest]:
    with LandscapeTest(
        customers,
        orders,
        log_url=f"embedded:///{tmp_path}/log.db",
        db_url=f"sqlite:///{tmp_path}/{{service}}.db",
    ) as test:
        yield test


@pytest.fixture
def dlq(tmp_path: Path) -> Iterator[LandscapeTest]:
    broken.clear()
    broken["now"] = True
    with LandscapeTest(
        fragile,
        follower,
        log_url=f"embedded:///{tmp_path}/log.db",
        db_url=f"sqlite:///{tmp_path}/{{service}}.db",
    ) as test:
        yield test


def test_status_prints_json_with_every_partition_and_the_pending_dead_letters(
    shop: LandscapeTest, tmp_path: Path
) -> None:
    shop.send(CreateCustomer(customer_id="ada", name="Ada"))
    shop.run_until_quiet()
    found = Cli("loglane.examples.shop", tmp_path).json("status")
    by_service = {service["service"]: service for service in found["services"]}
    assert set(by_service) == {"customers", "orders"}
    customers = by_service["customers"]
    assert customers["lag"] == 0
    assert customers["dead_letters"] == 0
    assert {row["topic"] for row in customers["partitions"]} == {"customers.in"}
    assert sum(row["log_end"] for row in customers["partitions"]) == 1
    assert all(row["stored"] == row["log_end"] for row in customers["partitions"] if row["stored"])


def test_dead_letters_are_listed_as_json_and_filtered(dlq: LandscapeTest, tmp_path: Path) -> None:
    first = dlq.send(Keep(item="first"))
    dlq.send(Keep(item="second"))
    dlq.run_until_quiet()
    cli = Cli("tests.test_dlq", tmp_path)
    letters = cli.json("dlq", "list", "--service", "fragile")
    assert sorted(letter["key"] for letter in letters) == ["first", "second"]
    (only,) = cli.json("dlq", "list", "--service", "fragile", "--key", "first")
    assert only["request_id"] == first
    assert only["type"] == "Keep"
    assert only["reason"] == "handler failed 1 times: RuntimeError('the disk is on fire')"
    assert cli.json("dlq", "list", "--service", "fragile", "--type", "Other") == []
    assert len(cli.json("dlq", "list", "--service", "fragile", "--error", "DISK IS ON")) == 2


def test_a_dead_letter_list_fits_80_columns_without_cutting_ids(
    dlq: LandscapeTest, tmp_path: Path
) -> None:
    request_id = dlq.send(Keep(item="narrow"))
    dlq.run_until_quiet()
    listed = Cli("tests.test_dlq", tmp_path)("dlq", "list", "--service", "fragile", columns=80)
    assert listed.exit_code == 0, listed.output
    assert request_id in listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80


def test_dlq_show_prints_the_traceback_headers_and_payload(
    dlq: LandscapeTest, tmp_path: Path
) -> None:
    dlq.send(Keep(item="shown"))
    dlq.run_until_quiet()
    cli = Cli("tests.test_dlq", tmp_path)
    (listed,) = cli.json("dlq", "list", "--service", "fragile")
    shown = cli.json("dlq", "show", listed["id"], "--service", "fragile")
    assert shown["status"] == "pending"
    assert shown["traceback"].startswith("Traceback (most recent call last):")
    assert "keep_item" in shown["traceback"]
    assert shown["headers"]["ce_type"] == "Keep"
    assert json.loads(shown["payload"]) == {"item": "shown"}
    text = cli("dlq", "show", listed["id"], "--service", "fragile")
    assert text.exit_code == 0, text.output
    assert 'raise RuntimeError("the disk is on fire")' in text.stdout
    assert '{"item":"shown"}' in text.stdout
    assert "ce_source" in text.stdout


def test_a_dropped_letter_leaves_the_list_and_one_letter_is_redriven_by_id(
    dlq: LandscapeTest, tmp_path: Path
) -> None:
    dlq.send(Keep(item="poison"))
    dlq.send(Keep(item="retry"))
    dlq.run_until_quiet()
    cli = Cli("tests.test_dlq", tmp_path)
    ids = {
        letter["key"]: letter["id"] for letter in cli.json("dlq", "list", "--service", "fragile")
    }
    dropped = cli("dlq", "drop", ids["poison"], "--service", "fragile")
    assert dropped.exit_code == 0, dropped.output
    assert f"dropped dead letter {ids['poison']} of fragile.dlq" in dropped.stdout
    broken["now"] = False
    redriven = cli("dlq", "redrive", ids["retry"], "--service", "fragile")
    assert redriven.exit_code == 0, redriven.output
    assert "re-drove 1 dead letters to fragile.in" in redriven.stdout
    assert cli.json("dlq", "list", "--service", "fragile") == []
    statuses = {
        letter["key"]: letter["status"]
        for letter in cli.json("dlq", "list", "--service", "fragile", "--all")
    }
    assert statuses == {"poison": "dropped", "retry": "redriven"}
    again = cli("dlq", "drop", ids["poison"], "--service", "fragile")
    assert again.exit_code == 2
    assert "was dropped already" in again.stderr
    assert again.stderr.count("\n") == 1


def test_an_unknown_dead_letter_id_is_one_clear_line(dlq: LandscapeTest, tmp_path: Path) -> None:
    shown = Cli("tests.test_dlq", tmp_path)("dlq", "show", "0:41", "--service", "fragile")
    assert shown.exit_code == 2
    assert "fragile.dlq has no dead letter 0:41" in shown.stderr
    assert shown.stderr.count("\n") == 1


def test_get_prints_a_row_of_a_view_as_json(shop: LandscapeTest, tmp_path: Path) -> None:
    shop.send(CreateCustomer(customer_id="ada", name="Ada"))
    shop.run_until_quiet()
    cli = Cli("loglane.examples.shop", tmp_path)
    row = cli("get", "customers", "ada", log=False)
    assert row.exit_code == 0, row.output
    assert json.loads(row.stdout) == {"customer_id": "ada", "name": "Ada"}
    named = cli("get", "orders/known_customers", "ada", log=False)
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout) == {"customer_id": "ada"}
    absent = cli("get", "customers", "bob", log=False)
    assert absent.exit_code == 2
    assert "customers/customers has no row with customer_id = 'bob'" in absent.stderr
    unknown = cli("get", "nope", "ada", log=False)
    assert unknown.exit_code == 2
    assert "no view 'nope'; views here: customers/customers, orders/known_customers" in (
        unknown.stderr.replace("\n", "")
    )


def test_request_shows_the_outcome_in_each_service(shop: LandscapeTest, tmp_path: Path) -> None:
    shop.send(CreateCustomer(customer_id="bob", name="Bob"))
    shop.run_until_quiet()
    request_id = shop.send(PlaceOrder(order_id="o1", customer_id="nobody", amount_cents=5))
    shop.run_until_quiet()
    cli = Cli("loglane.examples.shop", tmp_path)
    found = cli.json("request", request_id)
    (orders,) = found["services"]
    assert orders["service"] == "orders"
    assert orders["status"] == "rejected"
    assert orders["detail"] == "unknown customer nobody"
    assert [event["type"] for event in orders["events"]] == ["loglane.Rejected"]
    table = cli("request", request_id)
    assert table.exit_code == 0, table.output
    assert "rejected" in table.stdout
    assert request_id in table.stdout
    unknown = cli("request", "no-such-request")
    assert unknown.exit_code == 2
    assert "knows request 'no-such-request'" in unknown.stderr


def send_waiting(tmp_path: Path, wait: str, *body: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "loglane", "send", "loglane.examples.shop", *body),
            *("--wait", wait, "--log", f"embedded:///{tmp_path}/log.db"),
            *("--db", f"sqlite:///{tmp_path}/{{service}}.db"),
        ],
        cwd=ROOT,
        env=child_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_send_with_wait_prints_the_outcome_once_a_worker_handled_it(
    shop: LandscapeTest, tmp_path: Path
) -> None:
    sending = send_waiting(tmp_path, "120", "CreateCustomer", '{"customer_id": "cy", "name": "Cy"}')
    while True:  # the worker of this test handles the command the child posts
        shop.run_until_quiet()
        try:
            out, err = sending.communicate(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            continue
    assert sending.returncode == 0, err
    answer = json.loads(out)
    assert answer["status"] == "done"
    assert answer["topic"] == "customers.in"
    assert [event["type"] for event in answer["events"]] == ["CustomerCreated"]
    assert answer["events"][0]["data"] == {"customer_id": "cy", "name": "Cy"}


def test_send_with_wait_says_pending_and_fails_when_no_worker_answers(
    shop: LandscapeTest, tmp_path: Path
) -> None:
    sending = send_waiting(tmp_path, "0.2", "CreateCustomer", '{"customer_id": "x", "name": "X"}')
    out, err = sending.communicate(timeout=120)
    assert sending.returncode == 1, err
    assert json.loads(out)["status"] == "pending"


def test_request_shows_a_follower_that_failed_on_an_event_the_request_caused(
    dlq: LandscapeTest, tmp_path: Path
) -> None:
    broken["now"] = False
    broken["follower"] = True
    request_id = dlq.send(Keep(item="chain"))
    dlq.run_until_quiet()
    found = Cli("tests.test_dlq", tmp_path).json("request", request_id)
    by_service = {one["service"]: one for one in found["services"]}
    assert by_service["fragile"]["status"] == "done"
    assert [event["type"] for event in by_service["fragile"]["events"]] == ["Stored"]
    follower_letters = [letter.id for letter in dlq_letters(dlq, "follower")]
    assert by_service["follower"]["status"] == "failed"
    assert by_service["follower"]["dead_letters"] == follower_letters
    assert "follower is down" in by_service["follower"]["detail"]


def dlq_letters(landscape: LandscapeTest, service: str) -> list[DeadLetter]:
    return list_letters(landscape.log, landscape.landscape.service(service))
