"""Bad input is a 4xx with a detail that says what to fix; a backend outage is a 503."""

from __future__ import annotations

import httpx

from loglane.api import create_app
from loglane.errors import BackendUnavailableError
from loglane.examples.shop import landscape
from loglane.stores.base import Store
from tests.api.conftest import DEADLINE, LiveServer, Stack


def test_a_body_that_fails_validation_is_422_with_the_pydantic_detail(shop: httpx.Client) -> None:
    response = shop.post("/customers/commands/CreateCustomer", json={"customer_id": ""})

    assert response.status_code == 422
    problems = {tuple(error["loc"]): error["type"] for error in response.json()["detail"]}
    assert problems == {("body", "customer_id"): "string_too_short", ("body", "name"): "missing"}


def test_a_body_that_is_not_json_is_422(shop: httpx.Client) -> None:
    response = shop.post(
        "/customers/commands/CreateCustomer",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_an_oversized_body_is_413(stack: Stack) -> None:
    server = stack.serve(max_body_bytes=200)
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        declared = client.post(
            "/customers/commands/CreateCustomer", json={"customer_id": "c1", "name": "x" * 300}
        )
        chunked = client.post(
            "/customers/commands/CreateCustomer",
            content=iter([b'{"customer_id": "c1", "name": "', b"x" * 300, b'"}']),
            headers={"content-type": "application/json"},
        )

    assert declared.status_code == chunked.status_code == 413
    assert "larger than 200 bytes" in declared.json()["detail"]
    assert "larger than 200 bytes" in chunked.json()["detail"]


def test_unknown_services_command_types_and_views_are_404(shop: httpx.Client) -> None:
    unknown_service = shop.get("/billing/views/invoices")
    unknown_type = shop.post("/customers/commands/DeleteCustomer", json={})
    unknown_view = shop.get("/customers/views/invoices/1")
    unknown_request = shop.get("/customers/requests/no-such-request")

    assert unknown_service.status_code == 404
    assert "/customers, /orders" in unknown_service.json()["detail"]
    assert unknown_type.status_code == 404
    assert "it accepts CreateCustomer" in unknown_type.json()["detail"]
    assert unknown_view.status_code == 404
    assert "it has customers" in unknown_view.json()["detail"]
    assert unknown_request.status_code == 404


def test_a_wait_longer_than_allowed_is_422(shop: httpx.Client) -> None:
    response = shop.post(
        "/customers/commands/CreateCustomer",
        json={"customer_id": "c1", "name": "Ada"},
        params={"wait": 3600},
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "wait"]


class UnreachableStore:
    """A store factory for a database server that does not answer."""

    def __call__(self, service: str) -> Store:
        raise BackendUnavailableError(f"cannot reach the database of {service}")


def test_an_unreachable_store_is_503_and_not_ready_but_still_healthy(stack: Stack) -> None:
    server = LiveServer(create_app(landscape, stack.log, UnreachableStore())).start()
    stack.servers.append(server)
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        posted = client.post(
            "/customers/commands/CreateCustomer", json={"customer_id": "c1", "name": "Ada"}
        )
        ready = client.get("/readyz")
        healthy = client.get("/healthz")

    assert posted.status_code == 503
    assert "cannot reach the database of customers" in posted.json()["detail"]
    assert ready.status_code == 503
    assert ready.json()["services"]["customers"].startswith("BackendUnavailableError")
    assert healthy.status_code == 200
