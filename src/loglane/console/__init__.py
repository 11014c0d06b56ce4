"""The web console at `/ui`: the landscape, each service's partitions, its dead letters and
views, a request's path through every service, and forms that post commands.

Plain server-rendered HTML (Jinja2 templates in `templates/`) with a little vanilla
JavaScript (`static/`) for live refreshes and the command form. It reads what the HTTP API
reads, through the same `ServiceRuntime`s, behind the same tokens (see `gate.py`).

    /ui                                     the landscape: services, topics, who follows whom
    /ui/services/{service}                  partitions: log end, stored, lag, outbox, events/s
    /ui/services/{service}/dlq[/{id}]       dead letters; show, re-drive, drop
    /ui/services/{service}/views[/{view}]   views: rows page by page, a key looked up
    /ui/requests?id=…                       one request's path through every service, live
    /ui/commands[/{service}/{type}]         forms generated from the commands' JSON schemas
    /ui/login, /ui/logout                   a session cookie for the API's bearer token
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from starlette.responses import Response

from loglane.console import forms, landscape, letters, partitions, paths, rows
from loglane.console.context import PREFIX, Console, PageNotFoundError
from loglane.console.gate import ConsoleGate

if TYPE_CHECKING:
    from loglane.api.runtime import ServiceRuntime

__all__ = ["install_console"]


def install_console(
    app: FastAPI, runtimes: Mapping[str, ServiceRuntime], tokens: Sequence[str]
) -> None:
    """Serve the console of `runtimes` at `/ui`. Call after adding the `BearerAuth`
    middleware: the gate it adds must run before it."""
    console = Console(runtimes)
    for module in (landscape, partitions, letters, rows, paths, forms):
        app.include_router(module.router(console), prefix=PREFIX)

    async def not_found(request: Request, exc: Exception) -> Response:
        return console.page(request, "error.html", 404, heading="Not found", message=str(exc))

    app.add_exception_handler(PageNotFoundError, not_found)
    app.add_middleware(ConsoleGate, tokens=list(tokens), console=console)
