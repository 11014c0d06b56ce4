"""Real worker processes killed with SIGKILL while commands flow: nothing lost, nothing twice."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from loglane.commands import command_message
from loglane.envelope import output_event_id
from loglane.records import TopicPartition
from loglane.worker import ensure_topics
from tests.apps.ledger import accounts, assert_folded, deposits, landscape, ledger, tallies
from tests.conftest import eventually
from tests.postgres import PostgresStack, drop_schemas
from tests.processes import PositionWatch, Stack, WorkerProcess

pytestmark = pytest.mark.slow

ACCOUNTS = 1000
PER_ACCOUNT = 20  # 20,000 commands


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The embedded log with the views in SQLite, or in PostgreSQL."""
    if request.param == "sqlite":
        yield Stack(tmp_path)
        return
    url: str = request.getfixturevalue("postgres_url")
    stack = PostgresStack(tmp_path, url=url)
    yield stack
    drop_schemas(url, stack.prefix)


def feed(stack: Stack, request_ids: list[str], done: threading.Event) -> None:
    """Append every deposit in chunks, as clients would while workers come and go."""
    log = stack.log()
    messages = [command_message(ledger, d) for d in deposits(ACCOUNTS, PER_ACCOUNT)]
    for start in range(0, len(messages), 250):
        chunk = messages[start : start + 250]
        log.append([message for _, message in chunk])
        request_ids.extend(rid for rid, _ in chunk)
    log.close()
    done.set()


def caught_up(stack: Stack) -> bool:
    log = stack.log()
    try:
        for service in landscape:
            store = stack.store(service.name)
            positions = store.positions(service.name)
            backlog = store.outbox_backlog(service.name)
            store.close()
            for topic in service.topics:
                for p, offsets in log.offsets(topic).items():
                    if positions.get(TopicPartition(topic, p), 0) < offsets.end:
                        return False
            if backlog:
                return False
        return True
    finally:
        log.close()


def stored_positions(stack: Stack, service: str) -> dict[TopicPartition, int]:
    store = stack.store(service)
    try:
        return store.positions(service)
    finally:
        store.close()


def wait_for_progress(stack: Stack, worker: WorkerProcess, done: Callable[[], bool]) -> None:
    """Wait until the worker has committed something since now, so it dies mid-work, or
    until `done()`: the ledger may be through while the audit still works."""
    before = positions(stack)
    eventually(
        lambda: positions(stack) != before or done() or worker.process.poll() is not None,
        timeout=120,
        message="the worker made progress",
    )
    assert worker.process.poll() is None, worker.describe()


def positions(stack: Stack) -> list[dict[TopicPartition, int]]:
    return [stored_positions(stack, service.name) for service in landscape]


def assert_exactly_once(stack: Stack, request_ids: list[str]) -> None:
    """Views equal the fold of the input, and every output id is there, none lost."""
    ledger_store, audit_store = stack.store("ledger"), stack.store("audit")
    assert_folded(
        partial(ledger_store.get, accounts),
        partial(audit_store.get, tallies),
        ACCOUNTS,
        PER_ACCOUNT,
    )
    log = stack.log()
    published = [
        dict(record.headers)["ce_id"].decode()
        for p, offsets in log.offsets("ledger.out").items()
        for record in log.read(TopicPartition("ledger.out", p), 0, offsets.end)
    ]
    assert set(published) == {output_event_id("ledger", rid, 0) for rid in request_ids}
    for dlq in ("ledger.dlq", "audit.dlq"):
        assert all(o.end == 0 for o in log.offsets(dlq).values()), f"{dlq} is not empty"
    log.close()
    ledger_store.close()
    audit_store.close()


def test_sigkilled_workers_lose_nothing_and_apply_nothing_twice(stack: Stack) -> None:
    log = stack.log()
    ensure_topics(log, list(landscape))
    log.close()
    request_ids: list[str] = []
    fed = threading.Event()
    feeder = threading.Thread(target=feed, args=(stack, request_ids, fed), daemon=True)
    watch = PositionWatch(stack, ["ledger", "audit"])
    watch.start()
    feeder.start()
    rng = random.Random(20261127)

    def done() -> bool:
        return fed.is_set() and caught_up(stack)

    kills = 0
    worker = WorkerProcess(stack, "run", "tests.apps.ledger")
    try:
        while kills < 8 and not done():
            wait_for_progress(stack, worker, done)
            if done():
                break
            time.sleep(rng.uniform(0.0, 0.4))  # kill at a random moment of the work
            worker.kill()
            kills += 1
            worker = WorkerProcess(stack, "run", "tests.apps.ledger")
        eventually(
            lambda: fed.is_set() and caught_up(stack),
            timeout=300,
            step=0.2,
            message="the landscape caught up",
        )
        worker.wait_started()
        assert worker.stop() == 0, worker.describe()
    finally:
        if worker.process.poll() is None:
            worker.kill()
        watch.stop()
    print(f"{kills} kills, {watch.samples} samples")
    assert kills >= 3, "the run ended before the workers were killed a few times"
    assert watch.samples > 10
    assert watch.violations == []
    assert len(request_ids) == ACCOUNTS * PER_ACCOUNT
    assert_exactly_once(stack, request_ids)


def test_two_worker_processes_split_a_service_and_the_survivor_takes_over(
    stack: Stack,
) -> None:
    log = stack.log()
    ensure_topics(log, list(landscape))
    log.close()
    first = WorkerProcess(stack, "worker", "tests.apps.ledger", "--service", "ledger")
    second = WorkerProcess(stack, "worker", "tests.apps.ledger", "--service", "ledger")
    auditor = WorkerProcess(stack, "worker", "tests.apps.ledger", "--service", "audit")
    request_ids: list[str] = []
    fed = threading.Event()
    try:
        eventually(
            lambda: sorted(stack.lease_owners("ledger").values()) == [2, 2],
            message="both workers own two partitions each",
        )
        feeder = threading.Thread(target=feed, args=(stack, request_ids, fed), daemon=True)
        feeder.start()
        eventually(lambda: len(request_ids) > 5000, message="commands are flowing")
        first.kill()
        eventually(
            lambda: list(stack.lease_owners("ledger").values()) == [4],
            timeout=60,
            message="the survivor owns every partition",
        )
        eventually(
            lambda: fed.is_set() and caught_up(stack),
            timeout=300,
            step=0.2,
            message="the landscape caught up",
        )
        assert second.stop() == 0, second.describe()
        assert auditor.stop() == 0, auditor.describe()
    finally:
        for process in (first, second, auditor):
            if process.process.poll() is None:
                process.kill()
    assert_exactly_once(stack, request_ids)
