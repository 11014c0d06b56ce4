"""What a console page cannot use is a 4xx page saying why, never a 500."""

from __future__ import annotations

import html

import pytest

from tests.console.conftest import Server


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/ui/requests?id=a%00b", 400, "NUL character"),
        ("/ui/requests?id=" + "x" * 201, 400, "at most 200 characters"),
        ("/ui/requests/a%00b/path", 400, "NUL character"),
        ("/ui/services/customers/views/customers?key=a%00b", 400, "NUL character"),
        ("/ui/services/customers/views/nothing", 404, "has no view 'nothing'"),
        ("/ui/services/customers/dlq/not-an-id", 404, "is not a dead letter id"),
        ("/ui/services/customers/dlq/0:99999999999999999999", 404, "has no dead letter"),
        ("/ui/commands/customers/Nothing", 404, "accepts no command 'Nothing'"),
        ("/ui/services/nobody/views", 404, "serves no service 'nobody'"),
    ],
)
def test_a_page_given_what_it_cannot_use_says_why(
    server: Server, path: str, status: int, says: str
) -> None:
    with server.api() as api:
        answer = api.get(path)
    assert answer.status_code == status
    assert says in html.unescape(answer.text)
