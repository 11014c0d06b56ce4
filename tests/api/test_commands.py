"""Posting commands over HTTP: accepted, waited for, rejected, retried."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from loglane.api.commands import KEYED_REQUEST_NAMESPACE, keyed_request_id
from loglane.api.positions import encode_position
from loglane.records import Message, Position
from tests.api.conftest import DEADLINE, Stack
from tests.conftest import eventually


def create(
    client: httpx.Client,
    customer_id: str,
    name: str = "Ada",
    headers: dict[str, str] | None = None,
    **params: object,
) -> httpx.Response:
    return client.post(
        "/customers/commands/CreateCustomer",
        json={"customer_id": customer_id, "name": name},
        params=params,
        headers=headers,
    )


def test_a_post_with_wait_returns_the_customer_created_event(shop: httpx.Client) -> None:
    response = create(shop, "c1", wait=30)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done"
    [event] = body["events"]
    assert event["type"] == "CustomerCreated"
    assert event["data"] == {"customer_id": "c1", "name": "Ada"}
    assert event["correlation_id"] == body["request_id"]


def test_a_duplicate_customer_returns_the_rejection(shop: httpx.Client) -> None:
    assert create(shop, "c1", wait=30).json()["status"] == "done"

    response = create(shop, "c1", name="Bob", wait=30)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "rejected"
    assert body["detail"] == "customer c1 exists"
    assert [event["type"] for event in body["events"]] == ["loglane.Rejected"]


def input_records(stack: Stack) -> int:
    return sum(offsets.end for offsets in stack.log.offsets("customers.in").values())


def test_a_post_without_wait_is_accepted_with_its_request_id_and_position(
    shop: httpx.Client,
) -> None:
    response = create(shop, "c1")

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert body["request_id"]
    assert body["position"]


def test_a_post_retried_with_the_same_idempotency_key_is_appended_once(
    stack: Stack, shop: httpx.Client
) -> None:
    key = {"Idempotency-Key": "order-form-17"}
    first = shop.post(
        "/customers/commands/CreateCustomer",
        json={"customer_id": "c1", "name": "Ada"},
        params={"wait": 30},
        headers=key,
    )
    again = shop.post(
        "/customers/commands/CreateCustomer",
        json={"customer_id": "c1", "name": "Ada"},
        params={"wait": 30},
        headers=key,
    )

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert again.json()["status"] == "done"  # not "rejected": it was not handled twice
    assert input_records(stack) == 1


def test_a_keyed_request_id_is_a_uuid5_of_the_service_and_the_key(shop: httpx.Client) -> None:
    key = {"Idempotency-Key": "order-form-17"}

    customer = create(shop, "c1", headers=key)
    order = shop.post(
        "/orders/commands/PlaceOrder",
        json={"order_id": "o1", "customer_id": "c1", "amount_cents": 5},
        headers=key,
    )

    request_id = uuid.UUID(customer.json()["request_id"])
    assert request_id.version == 5
    assert request_id == uuid.uuid5(KEYED_REQUEST_NAMESPACE, "customers:order-form-17")
    assert order.json()["request_id"] != customer.json()["request_id"]


def test_an_idempotency_key_cannot_name_a_request_posted_without_one(
    stack: Stack, shop: httpx.Client
) -> None:
    first = create(shop, "c1", wait=DEADLINE)
    their_id = first.json()["request_id"]

    # another client sends the same command with the first request's id as its key
    second = shop.post(
        "/customers/commands/CreateCustomer",
        json={"customer_id": "c1", "name": "Ada"},
        params={"wait": DEADLINE},
        headers={"Idempotency-Key": their_id},
    )

    assert second.status_code == 200, second.text
    assert second.json()["request_id"] != their_id
    assert second.json()["status"] == "rejected"  # its own outcome, not the first's events
    assert input_records(stack) == 2


def test_concurrent_posts_with_the_same_idempotency_key_are_appended_once(
    stack: Stack, shop: httpx.Client
) -> None:
    def post(_: int) -> httpx.Response:
        return shop.post(
            "/customers/commands/CreateCustomer",
            json={"customer_id": "c1", "name": "Ada"},
            params={"wait": 30},
            headers={"Idempotency-Key": "k-1"},
        )

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(16)))

    assert {response.status_code for response in responses} == {200}
    assert {response.json()["status"] for response in responses} == {"done"}
    assert {response.json()["position"] for response in responses} == {
        responses[0].json()["position"]
    }
    assert input_records(stack) == 1


def test_a_claim_taken_over_from_a_slow_append_leaves_one_answer_for_both_posts(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = stack.serve(claim_timeout=1.0)
    stack.start_workers(on_commit=server.state.committed)
    ledger = stack.store("customers")
    request_id = keyed_request_id("customers", "slow-1")
    append = stack.log.append
    stalled = threading.Event()
    go_on = threading.Event()

    def first_append_stalls(messages: Sequence[Message]) -> list[Position]:
        if messages[0].topic == "customers.in" and not stalled.is_set():
            stalled.set()
            go_on.wait(DEADLINE)
        return append(messages)

    monkeypatch.setattr(stack.log, "append", first_append_stalls)

    def post() -> httpx.Response:
        return create(client, "c1", headers={"Idempotency-Key": "slow-1"}, wait=DEADLINE)

    with (
        httpx.Client(base_url=server.url, timeout=DEADLINE) as client,
        ThreadPoolExecutor() as pool,
    ):
        slow = pool.submit(post)
        eventually(stalled.is_set, message="the first append stalled")
        first_claim = ledger.accepted("customers", request_id)
        retry = pool.submit(post)
        eventually(
            lambda: ledger.accepted("customers", request_id) != first_claim,
            message="the retry took the stale claim over",
        )
        go_on.set()
        answers = [slow.result().json(), retry.result().json()]

    # both copies are in the log, under one request id: handled once, answered alike
    assert input_records(stack) == 2
    assert answers[0] == answers[1]
    assert answers[0]["status"] == "done"
    entry = ledger.accepted("customers", request_id)
    assert entry is not None
    assert entry.position is not None
    assert answers[0]["position"] == encode_position(entry.position)


def test_an_idempotency_key_reused_for_another_command_is_refused(shop: httpx.Client) -> None:
    key = {"Idempotency-Key": "k-2"}
    shop.post(
        "/customers/commands/CreateCustomer", json={"customer_id": "c1", "name": "Ada"}, headers=key
    )

    response = shop.post(
        "/customers/commands/CreateCustomer", json={"customer_id": "c2", "name": "Bob"}, headers=key
    )

    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["header", "Idempotency-Key"]
    assert "different command" in problem["msg"]


def test_a_request_accepted_while_the_workers_are_stopped_completes_when_they_restart(
    stack: Stack,
) -> None:
    server = stack.serve()
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        accepted = create(client, "c1", wait=0.2)
        assert accepted.status_code == 202
        request_id = accepted.json()["request_id"]
        pending = client.get(f"/customers/requests/{request_id}")
        assert pending.json()["status"] == "pending"

        # a worker in its own right, not hooked to this server: it learns from the store
        stack.start_workers()
        done = client.get(f"/customers/requests/{request_id}", params={"wait": DEADLINE})

    assert done.json()["status"] == "done"
    assert [event["type"] for event in done.json()["events"]] == ["CustomerCreated"]
    assert input_records(stack) == 1


def test_a_command_accepted_when_a_worker_stopped_mid_stream_is_not_lost(stack: Stack) -> None:
    server = stack.serve()
    stack.start_workers()
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        assert create(client, "c1", wait=DEADLINE).json()["status"] == "done"
        stack.stop_workers()
        accepted = create(client, "c2")
        stack.start_workers()
        done = client.get(
            f"/customers/requests/{accepted.json()['request_id']}", params={"wait": DEADLINE}
        )
        row = client.get("/customers/views/customers/c2")

    assert done.json()["status"] == "done"
    assert row.json() == {"customer_id": "c2", "name": "Ada"}
