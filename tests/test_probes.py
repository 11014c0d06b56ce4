"""A process of workers serves /healthz, /readyz and /metrics (`loglane worker --probe-port`)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loglane.commands import command_message
from loglane.logs.embedded import EmbeddedLog
from loglane.probes import Probes, serve_probes
from loglane.records import Message
from loglane.runner import WorkerThreads
from tests.apps.ledger import deposits, ledger
from tests.conftest import eventually
from tests.processes import child_environment


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[WorkerThreads, Probes]]:
    threads = WorkerThreads(
        [ledger], log_url=f"embedded:///{tmp_path}/log.db", db_url=f"sqlite:///{tmp_path}/l.db"
    )
    threads.start()
    probes, progress = serve_probes(threads, host="127.0.0.1", port=0)
    yield threads, probes
    threads.join(timeout=60)
    probes.close()
    progress.close()


def samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def events(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], outcome: str) -> float:
    return found.get(("loglane_events_total", (("outcome", outcome), ("service", "ledger"))), 0.0)


def test_a_worker_process_reports_health_readiness_and_what_its_workers_did(
    workers: tuple[WorkerThreads, Probes], tmp_path: Path
) -> None:
    threads, probes = workers
    with httpx.Client(base_url=probes.url, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        eventually(lambda: client.get("/readyz").status_code == 200, message="ready")
        assert client.get("/readyz").json()["workers"] == {"ledger#1": "ok"}
        before = samples(client)

        log = EmbeddedLog(tmp_path / "log.db")
        good = [command_message(ledger, d)[1] for d in deposits(accounts_count=3, per_account=4)]
        not_an_event = Message("ledger.in", b"acct-0", b"{}", ())
        log.append([*good, not_an_event])
        log.close()
        eventually(
            lambda: events(samples(client), "failed") - events(before, "failed") == 1,
            message="the bad record was counted",
        )
        after = samples(client)
        assert events(after, "done") - events(before, "done") == 12
        dead = ("loglane_dead_letters_total", (("service", "ledger"),))
        assert after[dead] - before.get(dead, 0.0) == 1
        lag = (
            "loglane_partition_lag",
            (("partition", "0"), ("service", "ledger"), ("topic", "ledger.in")),
        )
        assert after[lag] == 0, "the workers caught up"
        parked = ("loglane_partition_parked_keys", lag[1])
        assert after[parked] == 1, "acct-0 waits behind the record that was no event"
        assert ("loglane_batch_records_count", (("service", "ledger"),)) in after
        assert any(name == "loglane_handler_seconds_count" for name, _ in after)

        threads.join(timeout=60)
        stopped = client.get("/readyz")
        assert stopped.status_code == 503
        assert stopped.json()["workers"] == {"ledger#1": "stopped"}
        assert client.get("/nowhere").status_code == 404


def test_loglane_worker_serves_its_probes_on_the_port_it_is_given(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "loglane", "worker", "tests.apps.ledger"]
    command += ["--service", "ledger", "--probe-port", "0"]
    command += ["--log", f"embedded:///{tmp_path}/log.db", "--db", f"sqlite:///{tmp_path}/l.db"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_environment()
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()  # the first line says where
        where = re.search(r"probes on (http://[\d.]+:\d+)", line)
        assert where is not None, line
        with httpx.Client(base_url=where.group(1), timeout=30) as client:
            eventually(lambda: client.get("/readyz").status_code == 200, message="ready")
            assert "loglane_partition_lag" in client.get("/metrics").text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        if process.stdout is not None:
            process.stdout.close()
