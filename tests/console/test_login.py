"""The console's login: a session cookie that stands for a token, and only on this site."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loglane.api import create_app
from loglane.console.gate import COOKIE, session_value
from loglane.examples.shop import landscape
from loglane.urls import open_log, open_store
from tests.api.conftest import LiveServer
from tests.console.conftest import TOKEN, Server

BODY = {"customer_id": "cookie-monster", "name": "Cookie"}


def browser_like(server: Server) -> httpx.Client:
    """A client that keeps cookies and does not follow redirects, as a test of them needs."""
    return httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)


def test_a_console_page_without_a_session_redirects_to_the_login_page(server: Server) -> None:
    with browser_like(server) as client:
        answer = client.get("/ui/services/customers?x=1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fservices%2Fcustomers%3Fx%3D1"


def test_the_api_still_wants_a_token_from_a_client_without_a_session(server: Server) -> None:
    with browser_like(server) as client:
        assert client.get("/customers/views/customers/nobody").status_code == 401
        assert client.get("/ui/static/console.css").status_code == 200  # nothing secret


def test_a_token_in_the_query_logs_in_and_is_dropped_from_the_address(server: Server) -> None:
    with browser_like(server) as client:
        answer = client.get(f"/ui/services/orders?token={TOKEN}&a=b")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/services/orders?a=b"
        assert client.cookies[COOKIE] == session_value(TOKEN)
        assert TOKEN not in client.cookies[COOKIE]
        assert client.get("/ui/services/orders").status_code == 200
        assert client.get("/customers/views/customers/nobody").status_code == 404


def test_a_wrong_token_in_the_query_logs_nobody_in(server: Server) -> None:
    with browser_like(server) as client:
        answer = client.get("/ui?token=guess")
        assert answer.headers["location"].startswith("/ui/login")
        assert COOKIE not in client.cookies


def test_the_login_form_sends_nobody_to_another_site(server: Server) -> None:
    with browser_like(server) as client:
        answer = client.post("/ui/login?next=https://elsewhere.example/ui", data={"token": TOKEN})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui"


def test_a_session_cannot_post_a_command_from_another_site(server: Server) -> None:
    cookies = {COOKIE: session_value(TOKEN)}
    with httpx.Client(base_url=server.url, timeout=30, cookies=cookies) as client:
        refused = client.post(
            "/customers/commands/CreateCustomer",
            json=BODY,
            headers={"Origin": "https://elsewhere.example"},
        )
        assert refused.status_code == 403
        assert "cross-site" in refused.json()["detail"]
        accepted = client.post(
            "/customers/commands/CreateCustomer", json=BODY, headers={"Origin": server.url}
        )
        assert accepted.status_code == 202


def test_logging_out_forgets_the_session(server: Server) -> None:
    with browser_like(server) as client:
        client.get(f"/ui?token={TOKEN}")
        assert COOKIE in client.cookies
        answer = client.get("/ui/logout")
        assert answer.headers["location"] == "/ui/login"
        assert COOKIE not in client.cookies


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[str]:
    """The shop's API and console without tokens, served in this process."""
    log = open_log(f"embedded:///{tmp_path}/log.db")
    app = create_app(
        landscape, log, lambda name: open_store(f"sqlite:///{tmp_path}/{{service}}.db", name)
    )
    server = LiveServer(app).start()
    yield server.url
    server.stop()
    log.close()


def test_without_tokens_the_console_needs_no_login(open_server: str) -> None:
    with httpx.Client(base_url=open_server, timeout=30, follow_redirects=False) as client:
        page = client.get("/ui")
        assert page.status_code == 200
        assert 'data-service="orders"' in page.text
        assert client.get("/ui/login").headers["location"] == "/ui"
