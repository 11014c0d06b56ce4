"""Bad input is a 4xx with a detail that says what to fix; a backend outage is a 503."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from loglane import Event, Service, Transaction
from loglane.api import create_app
from loglane.errors import BackendUnavailableError
from loglane.examples.shop import landscape
from loglane.stores.base import Store
from loglane.urls import open_store
from tests.api.conftest import DEADLINE, LiveServer, Stack
from tests.api.unstorable import assert_each_is_refused_with_a_detail


def test_a_body_that_fails_validation_is_422_with_the_pydantic_detail(shop: httpx.Client) -> None:
    response = shop.post("/customers/commands/CreateCustomer", json={"customer_id": ""})

    assert response.status_code == 422
    problems = {tuple(error["loc"]): error["type"] for error in response.json()["detail"]}
    assert problems == {("body", "customer_id"): "string_too_short", ("body", "name"): "missing"}


def test_values_no_store_or_json_can_hold_are_422_with_what_is_wrong(shop: httpx.Client) -> None:
    assert_each_is_refused_with_a_detail(shop)


def test_a_command_with_a_nul_is_refused_before_it_is_appended(
    stack: Stack, shop: httpx.Client
) -> None:
    response = shop.post(
        "/customers/commands/CreateCustomer", json={"customer_id": "c1", "name": "A\u0000da"}
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]
    assert sum(offsets.end for offsets in stack.log.offsets("customers.in").values()) == 0


def test_a_body_in_another_encoding_than_json_is_422(shop: httpx.Client) -> None:
    response = shop.post(
        "/customers/commands/CreateCustomer",
        content=b"\xff\xfe",
        headers={"content-type": "text/plain"},
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["input"] == "\\xff\\xfe"


tickets = Service("tickets", partitions=1)


class Ticket(BaseModel):
    number: int
    price: float


class Sell(Event):
    number: int
    notes: dict[str, Any]


ticket_view = tickets.view("tickets", Ticket, key="number", indexes=["price"])


@tickets.handles(Sell, key="number")
def sell(command: Sell, tx: Transaction) -> None:
    tx[ticket_view].put(Ticket(number=command.number, price=1.0))


@pytest.fixture
def box_office(stack: Stack) -> Iterator[httpx.Client]:
    """A server of `tickets`: a command with free-form notes, a view keyed by integers."""
    app = create_app(
        [tickets], stack.log, lambda name: open_store(f"sqlite:///{stack.folder}/{name}.db", name)
    )
    server = LiveServer(app).start()
    stack.servers.append(server)
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        yield client


def test_nul_lone_surrogates_and_nan_anywhere_in_a_command_are_422(
    box_office: httpx.Client,
) -> None:
    for notes, loc in [
        ('{"seat": ["A", "B\\u0000"]}', ["body", "notes", "seat", 1]),
        ('{"seat": {"row": "\\udc00"}}', ["body", "notes", "seat", "row"]),
        ('{"\\u0000": 1}', ["body", "notes", "\u0000"]),
        ('{"price": NaN}', ["body", "notes", "price"]),
    ]:
        response = box_office.post(
            "/tickets/commands/Sell",
            content=f'{{"number": 1, "notes": {notes}}}',
            headers={"content-type": "application/json"},
        )

        assert response.status_code == 422, (notes, response.text)
        assert response.json()["detail"][0]["loc"] == loc


def test_integers_beyond_64_bits_and_floats_beyond_json_in_a_read_are_422(
    box_office: httpx.Client,
) -> None:
    for url, loc in [
        ("/tickets/views/tickets/9223372036854775808", ["path", "key"]),
        ("/tickets/views/tickets?price=nan", ["query", "price"]),
        ("/tickets/views/tickets?price=1e400", ["query", "price"]),
    ]:
        response = box_office.get(url)

        assert response.status_code == 422, (url, response.text)
        assert response.json()["detail"][0]["loc"] == loc
    assert box_office.get("/tickets/views/tickets/9223372036854775807").status_code == 404


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
