"""Bearer-token auth: off by default; when on, everything but /healthz needs a token."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import DEADLINE, Stack

ROUTES = [
    ("GET", "/customers/views/customers"),
    ("POST", "/customers/commands/CreateCustomer"),
    ("GET", "/customers/requests/r1"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/route"),
]


@pytest.fixture
def guarded(stack: Stack) -> httpx.Client:
    server = stack.serve(tokens=("first-token", "second-token"))
    return httpx.Client(base_url=server.url, timeout=DEADLINE)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_without_a_valid_token_every_route_is_401(
    guarded: httpx.Client, method: str, path: str
) -> None:
    with guarded:
        missing = guarded.request(method, path)
        wrong = guarded.request(method, path, headers={"Authorization": "Bearer nope"})
        basic = guarded.request(method, path, headers={"Authorization": "Basic Zmlyc3QtdG9rZW4="})

    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_healthz_needs_no_token(guarded: httpx.Client) -> None:
    with guarded:
        assert guarded.get("/healthz").status_code == 200


def test_any_configured_token_is_accepted(guarded: httpx.Client) -> None:
    with guarded:
        for token in ("first-token", "second-token"):
            response = guarded.get(
                "/customers/views/customers", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200


def test_the_openapi_schema_declares_the_bearer_scheme(guarded: httpx.Client) -> None:
    with guarded:
        schema = guarded.get(
            "/openapi.json", headers={"Authorization": "Bearer first-token"}
        ).json()

    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["security"] == [{"bearer": []}]


def test_without_tokens_configured_no_route_asks_for_one(shop: httpx.Client) -> None:
    assert shop.get("/customers/views/customers").status_code == 200
    assert shop.get("/openapi.json").status_code == 200
