"""Operations: readiness, Prometheus metrics and the generated OpenAPI schema."""

from __future__ import annotations

import httpx

from tests.api.conftest import DEADLINE


def test_ready_when_every_service_reaches_its_log_and_store(shop: httpx.Client) -> None:
    response = shop.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "services": {"customers": "ok", "orders": "ok"}}


def test_metrics_count_commands_and_waits_and_report_partition_lag(shop: httpx.Client) -> None:
    shop.post(
        "/customers/commands/CreateCustomer",
        json={"customer_id": "c1", "name": "Ada"},
        params={"wait": DEADLINE},
    )

    text = shop.get("/metrics").text

    accepted = 'outcome="accepted",service="customers",type="CreateCustomer"'
    assert f"loglane_api_commands_total{{{accepted}}} 1.0" in text
    assert 'loglane_api_waits_total{result="done",service="customers"} 1.0' in text
    assert 'loglane_partition_lag{partition="0",service="customers",topic="customers.in"}' in text
    assert "loglane_api_command_seconds_bucket" in text


def test_the_openapi_schema_shows_each_commands_own_body(shop: httpx.Client) -> None:
    schema = shop.get("/openapi.json").json()

    operation = schema["paths"]["/customers/commands/CreateCustomer"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CreateCustomer"}
    fields = schema["components"]["schemas"]["CreateCustomer"]["properties"]
    assert set(fields) == {"customer_id", "name"}
    assert "/orders/commands/PlaceOrder" in schema["paths"]
    assert "/orders/views/orders" in schema["paths"]
    assert shop.get("/docs").status_code == 200
