"""`loglane run` serves the API next to its workers; `loglane api` serves it on its own."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests.conftest import eventually
from tests.processes import Stack, WorkerProcess

SHOP = "loglane.examples.shop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def answering(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def started(process: WorkerProcess, url: str) -> None:
    eventually(
        lambda: answering(url) or process.process.poll() is not None,
        message=f"the server at {url} answering",
    )
    assert process.process.poll() is None, process.describe()


def test_run_serves_every_services_api_next_to_its_workers(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = WorkerProcess(stack, "run", SHOP, "--port", str(port), name="run")
    try:
        started(server, url)
        created = httpx.post(
            f"{url}/customers/commands/CreateCustomer",
            json={"customer_id": "c1", "name": "Ada"},
            params={"wait": 60},
            timeout=60,
        )
        ordered = httpx.post(
            f"{url}/orders/commands/PlaceOrder",
            json={"order_id": "o1", "customer_id": "nobody", "amount_cents": 5},
            params={"wait": 60},
            timeout=60,
        )
    finally:
        exit_code = server.stop()

    assert created.json()["status"] == "done", server.describe()
    assert ordered.json()["status"] == "rejected"
    assert exit_code == 0, server.describe()


def test_an_api_process_answers_waits_for_a_worker_in_another_process(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = WorkerProcess(
        stack, "api", SHOP, "--service", "customers", "--port", str(port), "--api-token", "t0k",
        name="api",
    )  # fmt: skip
    worker = WorkerProcess(stack, "worker", SHOP, "--service", "customers")
    try:
        started(api, url)
        response = httpx.post(
            f"{url}/customers/commands/CreateCustomer",
            json={"customer_id": "c1", "name": "Ada"},
            params={"wait": 60},
            headers={"Authorization": "Bearer t0k"},
            timeout=60,
        )
        unauthorized = httpx.get(f"{url}/customers/views/customers/c1", timeout=60)
        not_served = httpx.get(
            f"{url}/orders/views/orders", headers={"Authorization": "Bearer t0k"}, timeout=60
        )
    finally:
        worker.stop()
        api_exit = api.stop()

    assert response.json()["status"] == "done", api.describe()
    assert unauthorized.status_code == 401
    assert not_served.status_code == 404
    assert api_exit == 0, api.describe()


def test_a_port_in_use_gets_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = WorkerProcess(Stack(tmp_path), "api", SHOP, "--port", str(port), name="api")
        exit_code = api.process.wait(timeout=60)

    assert exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in api.describe()
    assert "Traceback" not in api.describe()
