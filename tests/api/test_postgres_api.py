"""The HTTP API on PostgreSQL: waits pushed by LISTEN/NOTIFY, and 503 while the server is down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loglane.api import ApiSettings, create_app
from loglane.examples.shop import landscape
from loglane.stores.base import Store
from loglane.urls import open_log, open_store
from tests.api.conftest import DEADLINE, LiveServer, Stack
from tests.api.unstorable import assert_each_is_refused_with_a_detail
from tests.conftest import eventually
from tests.postgres import PrivateServer, schemas, with_schema

pytestmark = pytest.mark.postgres


@dataclass(kw_only=True)
class PostgresApiStack(Stack):
    """The API's test stack with the shop's stores in PostgreSQL."""

    db_url: str

    def store(self, name: str) -> Store:
        store = open_store(self.db_url, name)
        self.stores.append(store)
        return store

    def serve(self, *, tokens: tuple[str, ...] = (), **settings: Any) -> LiveServer:
        app = create_app(
            landscape,
            self.log,
            lambda name: open_store(self.db_url, name),
            tokens=tokens,
            settings=ApiSettings(**settings),
        )
        server = LiveServer(app).start()
        self.servers.append(server)
        return server


def open_stack(folder: Path, db_url: str) -> PostgresApiStack:
    log = open_log(f"embedded:///{folder}/log.db?session_timeout=3&synchronous=normal")
    return PostgresApiStack(folder, log, db_url=db_url)


@pytest.fixture
def stack(tmp_path: Path, postgres_url: str) -> Iterator[PostgresApiStack]:
    with schemas(postgres_url) as prefix:
        stack = open_stack(tmp_path, with_schema(postgres_url, prefix + "{service}"))
        yield stack
        stack.close()


def test_a_wait_is_answered_when_a_worker_elsewhere_commits(stack: PostgresApiStack) -> None:
    server = stack.serve()
    # workers not hooked to the server, as in another process: only PostgreSQL tells it
    stack.start_workers()
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        response = client.post(
            "/customers/commands/CreateCustomer",
            json={"customer_id": "c1", "name": "Ada"},
            params={"wait": 30},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "done"
        assert [event["type"] for event in body["events"]] == ["CustomerCreated"]
        view = client.get("/customers/views/customers/c1", params={"position": body["position"]})
        assert view.status_code == 200, view.text
        assert view.json()["name"] == "Ada"


def test_values_postgresql_or_json_cannot_hold_are_422_not_500(
    stack: PostgresApiStack,
) -> None:
    server = stack.serve()
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        assert_each_is_refused_with_a_detail(client)


def test_the_api_answers_503_while_postgresql_is_down_and_recovers(tmp_path: Path) -> None:
    server = PrivateServer()
    stack = open_stack(tmp_path, with_schema(server.url, "shop_{service}") + "&pool_timeout=1")
    try:
        api = stack.serve()
        stack.start_workers()
        with httpx.Client(base_url=api.url, timeout=DEADLINE) as client:
            response = client.post(
                "/customers/commands/CreateCustomer", json={"customer_id": "c1", "name": "Ada"}
            )
            assert response.status_code == 202, response.text
            server.stop()
            # the log still takes commands; what needs the views cannot be served
            posted = client.post(
                "/customers/commands/CreateCustomer", json={"customer_id": "c3", "name": "Cy"}
            )
            assert posted.status_code == 202, posted.text
            for answer in [
                client.get("/customers/views/customers/c1"),
                client.get(f"/customers/requests/{response.json()['request_id']}"),
            ]:
                assert answer.status_code == 503, answer.text
                assert "PostgreSQL" in answer.json()["detail"]
            server.start()
            again = client.post(
                "/customers/commands/CreateCustomer",
                json={"customer_id": "c2", "name": "Bob"},
                params={"wait": 30},
            )
            assert again.status_code == 200, again.text
            assert again.json()["status"] == "done"
            c3 = client.get(
                "/customers/views/customers/c3", params={"position": posted.json()["position"]}
            )
            assert c3.status_code == 200, c3.text
    finally:
        stack.close()
        server.close()


def test_readyz_and_metrics_answer_at_once_while_postgresql_is_down(tmp_path: Path) -> None:
    """Probes must not wait on a backend that hangs: a probe's timeout is a few seconds, and a
    connection attempt to a stopped server may take the pool's whole timeout."""
    server = PrivateServer()
    stack = open_stack(tmp_path, with_schema(server.url, "shop_{service}") + "&pool_timeout=20")
    try:
        api = stack.serve()
        stack.start_workers()
        with httpx.Client(base_url=api.url, timeout=DEADLINE) as client:
            created = client.post(
                "/customers/commands/CreateCustomer",
                json={"customer_id": "c1", "name": "Ada"},
                params={"wait": 30},
            )
            assert created.status_code == 200, created.text
            assert client.get("/readyz").status_code == 200
            server.stop()
            for _ in range(3):  # later probes find the first checks still hanging
                started = time.monotonic()
                ready = client.get("/readyz")
                metrics = client.get("/metrics")
                # far below the pool's 20 s, which an unbounded check would take
                assert time.monotonic() - started < 8
                assert ready.status_code == 503, ready.text
                assert ready.json()["services"]["customers"] != "ok"
                assert metrics.status_code == 200
                names = {f.name for f in text_string_to_metric_families(metrics.text)}
                assert "loglane_progress_sample_age_seconds" in names
            server.start()
            eventually(lambda: client.get("/readyz").status_code == 200, message="ready again")
    finally:
        stack.close()
        server.close()
