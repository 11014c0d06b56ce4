"""Reading views over HTTP: one row, filtered pages, read-your-writes."""

from __future__ import annotations

import threading

import httpx

from tests.api.conftest import DEADLINE, Stack


def create(
    client: httpx.Client, customer_id: str, name: str = "Ada", **params: object
) -> httpx.Response:
    return client.post(
        "/customers/commands/CreateCustomer",
        json={"customer_id": customer_id, "name": name},
        params=params,
    )


def test_a_row_is_read_by_its_key(shop: httpx.Client) -> None:
    create(shop, "c1", wait=DEADLINE)

    response = shop.get("/customers/views/customers/c1")

    assert response.status_code == 200
    assert response.json() == {"customer_id": "c1", "name": "Ada"}


def test_an_absent_row_is_404(shop: httpx.Client) -> None:
    response = shop.get("/customers/views/customers/nobody")

    assert response.status_code == 404
    assert "nobody" in response.json()["detail"]


def test_a_read_with_the_position_of_a_post_sees_its_write(shop: httpx.Client) -> None:
    position = create(shop, "c1").json()["position"]

    response = shop.get("/customers/views/customers/c1", params={"position": position})

    assert response.status_code == 200
    assert response.json()["name"] == "Ada"


def test_a_read_with_a_position_waits_until_the_workers_applied_it(stack: Stack) -> None:
    server = stack.serve(read_wait=DEADLINE)
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        position = create(client, "c1").json()["position"]
        reader = threading.Thread(
            target=lambda: answers.append(
                client.get("/customers/views/customers", params={"position": position})
            )
        )
        reader.start()
        stack.start_workers()
        reader.join(DEADLINE)

    [answer] = answers
    assert answer.status_code == 200
    assert answer.json()["items"] == [{"customer_id": "c1", "name": "Ada"}]


def test_a_read_whose_position_is_not_applied_in_time_is_503(stack: Stack) -> None:
    server = stack.serve(read_wait=0.1)
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        position = create(client, "c1").json()["position"]

        response = client.get("/customers/views/customers/c1", params={"position": position})

    assert response.status_code == 503
    assert "has not applied this position" in response.json()["detail"]
    assert response.headers["retry-after"] == "1"


def test_a_position_token_that_no_post_returned_is_422(shop: httpx.Client) -> None:
    for token in ("garbage!", "Y3VzdG9tZXJzLmluOjA6OTk5OTk5", "b3JkZXJzLmluOjA6MA"):
        response = shop.get("/customers/views/customers/c1", params={"position": token})

        assert response.status_code == 422, token
        assert response.json()["detail"][0]["loc"] == ["query", "position"]


def test_rows_are_listed_in_key_order_page_by_page(shop: httpx.Client) -> None:
    for number in range(5):
        create(shop, f"c{number}", wait=DEADLINE)

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = shop.get("/customers/views/customers", params=params).json()
        seen.extend(row["customer_id"] for row in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == ["c0", "c1", "c2", "c3", "c4"]


def test_rows_are_filtered_by_an_indexed_field(shop: httpx.Client) -> None:
    create(shop, "c1", "Ada", wait=DEADLINE)
    create(shop, "c2", "Bob", wait=DEADLINE)
    create(shop, "c3", "Ada", wait=DEADLINE)

    page = shop.get("/customers/views/customers", params={"name": "Ada"}).json()

    assert [row["customer_id"] for row in page["items"]] == ["c1", "c3"]


def test_a_filter_on_a_field_that_is_not_indexed_is_422(shop: httpx.Client) -> None:
    response = shop.get("/orders/views/orders", params={"amount_cents": 5})

    assert response.status_code == 422
    assert "indexed fields: customer_id" in response.json()["detail"][0]["msg"]


def test_a_cursor_that_no_page_returned_is_422(shop: httpx.Client) -> None:
    response = shop.get("/customers/views/customers", params={"cursor": "MTIz"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]
