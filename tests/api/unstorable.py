"""Requests with values that a store or JSON cannot hold, for the tests on every store.

Each must get a 422 whose detail points at the value, never a 5xx: PostgreSQL text holds no
NUL, UTF-8 no lone surrogate, JSON no NaN or Infinity (and 1e400 reads as Infinity).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

CREATE = "/customers/commands/CreateCustomer"


@dataclass(frozen=True)
class Refused:
    """A request, where its bad value is (`loc`), and what the 422 says of it."""

    method: str
    url: str
    body: str | None
    loc: list[str | int]
    says: str = ""


REFUSED = [
    # bodies that fail validation: the 422 echoes the input, which JSON cannot hold
    Refused("POST", CREATE, '{"customer_id": NaN}', ["body", "customer_id"]),
    Refused("POST", CREATE, '{"customer_id": "c1", "name": Infinity}', ["body", "name"]),
    Refused("POST", CREATE, '{"customer_id": 1e400}', ["body", "customer_id"]),
    Refused("POST", CREATE, '{"customer_id": "\\ud800"}', ["body", "customer_id"]),
    # a valid command that PostgreSQL could not store
    Refused(
        "POST", CREATE, '{"customer_id": "c\\u0000", "name": "Ada"}', ["body", "customer_id"], "NUL"
    ),
    Refused("GET", "/customers/views/customers/c%00", None, ["path", "key"], "NUL"),
    Refused("GET", "/customers/views/customers?name=A%00", None, ["query", "name"], "NUL"),
    Refused("GET", "/customers/requests/r%00", None, ["path", "request_id"], "NUL"),
    # cursors of the keys "\u0000" and "\ud800", at which no page can end
    Refused("GET", "/customers/views/customers?cursor=Ilx1MDAwMCI", None, ["query", "cursor"]),
    Refused("GET", "/customers/views/customers?cursor=Ilx1ZDgwMCI", None, ["query", "cursor"]),
]


def assert_each_is_refused_with_a_detail(client: httpx.Client) -> None:
    for case in REFUSED:
        response = client.request(
            case.method,
            case.url,
            content=None if case.body is None else case.body.encode(),
            headers={"content-type": "application/json"},
        )

        assert response.status_code == 422, (case, response.text)
        problems = {tuple(problem["loc"]): problem["msg"] for problem in response.json()["detail"]}
        assert tuple(case.loc) in problems, (case, problems)
        assert case.says in problems[tuple(case.loc)], (case, problems)
