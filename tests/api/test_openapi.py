"""The OpenAPI document types the events a request produced and tells which routes need a
token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from loglane.api import create_app
from loglane.examples.shop import landscape, orders
from loglane.urls import open_log, open_store

OPERATIONS = ("get", "put", "post", "delete", "patch")


def openapi(tmp_path: Path, *, tokens: tuple[str, ...] = (), services: Any = landscape) -> Any:
    log = open_log(f"embedded:///{tmp_path}/log.db")
    try:
        app = create_app(
            services,
            log,
            lambda name: open_store(f"sqlite:///{tmp_path}/{name}.db", name),
            tokens=tokens,
        )
        return app.openapi()
    finally:
        log.close()


def operations(document: Any) -> Iterator[tuple[str, str, Any]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in OPERATIONS:
                yield path, method, operation


def schema_of(document: Any, name: str) -> Any:
    return document["components"]["schemas"][name]


def matches(document: Any, name: str, instance: Any) -> bool:
    """Whether `instance` is valid against the component schema `name`."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return bool(jsonschema_rs.validator_for(schema).is_valid(instance))


def event_variants(document: Any, state: str) -> list[str]:
    items = schema_of(document, state)["properties"]["events"]["items"]["anyOf"]
    return [variant["$ref"].rsplit("/", 1)[1] for variant in items]


def test_a_requests_events_are_typed_by_the_events_its_service_emits(tmp_path: Path) -> None:
    document = openapi(tmp_path)
    response = document["paths"]["/customers/requests/{request_id}"]["get"]["responses"]["200"]
    assert response["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CustomersRequestState"
    }
    assert event_variants(document, "CustomersRequestState") == [
        "CustomersCustomerCreatedEvent",
        "CustomersLoglaneRejectedEvent",
        "OutputEvent",  # an event whose type the service does not make known
    ]
    created = schema_of(document, "CustomersCustomerCreatedEvent")["properties"]
    assert created["type"]["const"] == "CustomerCreated"
    assert created["data"] == {"$ref": "#/components/schemas/CustomerCreated"}
    assert set(schema_of(document, "CustomerCreated")["properties"]) == {"customer_id", "name"}
    posted = document["paths"]["/orders/commands/PlaceOrder"]["post"]["responses"]["200"]
    assert posted["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OrdersRequestState"
    }
    assert "OrdersOrderPlacedEvent" in event_variants(document, "OrdersRequestState")


def test_a_service_served_alone_still_types_its_own_events(tmp_path: Path) -> None:
    document = openapi(tmp_path, services=[orders])
    assert event_variants(document, "OrdersRequestState") == [
        "OrdersOrderPlacedEvent",
        "OrdersLoglaneRejectedEvent",
        "OutputEvent",
    ]


def test_a_handled_requests_body_matches_its_typed_event(
    shop: httpx.Client, tmp_path: Path
) -> None:
    answer = shop.post(
        "/customers/commands/CreateCustomer?wait=30",
        json={"customer_id": "typed", "name": "Ty"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    document = shop.get("/openapi.json").json()
    assert matches(document, "CustomersRequestState", body)
    (event,) = body["events"]
    assert matches(document, "CustomersCustomerCreatedEvent", event)
    assert not matches(document, "CustomersLoglaneRejectedEvent", event)
    assert not matches(document, "CustomersCustomerCreatedEvent", {**event, "data": {"name": 1}})


def test_with_tokens_healthz_is_open_and_every_other_route_documents_its_401(
    tmp_path: Path,
) -> None:
    document = openapi(tmp_path, tokens=("secret",))
    assert document["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer"}
    }
    assert document["security"] == [{"bearer": []}]
    found = list(operations(document))
    assert len(found) >= 10
    for path, method, operation in found:
        if path == "/healthz":
            assert operation["security"] == []
            assert "401" not in operation["responses"]
        else:
            assert "security" not in operation, (method, path)  # the document's applies
            unauthorized = operation["responses"]["401"]
            assert unauthorized["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }


def test_without_tokens_no_route_needs_one(tmp_path: Path) -> None:
    document = openapi(tmp_path)
    assert "security" not in document
    assert "securitySchemes" not in document["components"]
    for _, _, operation in operations(document):
        assert "401" not in operation["responses"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/customers/views/customers/ada"])
def test_the_document_tells_the_truth_about_auth(tmp_path: Path, path: str) -> None:
    from tests.api.conftest import Stack

    stack = Stack(tmp_path, open_log(f"embedded:///{tmp_path}/served.db"))
    try:
        server = stack.serve(tokens=("secret",))
        document = httpx.get(f"{server.url}/openapi.json", headers=bearer()).json()
        answered = httpx.get(f"{server.url}{path}", timeout=60)
    finally:
        stack.close()
    templated = path if path in document["paths"] else "/customers/views/customers/{key}"
    needs_token = document["paths"][templated]["get"].get("security") != []
    assert (answered.status_code == 401) is needs_token


def bearer() -> dict[str, str]:
    return {"Authorization": "Bearer secret"}
