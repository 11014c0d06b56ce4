"""The app factory: one FastAPI app serving every given service under `/<service>`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from loglane.api.appending import append_each
from loglane.api.asyncapi import asyncapi_router
from loglane.api.auth import BearerAuth, document_bearer_auth
from loglane.api.commands import command_router
from loglane.api.errors import install_error_handlers
from loglane.api.grouping import GroupWriter
from loglane.api.health import health_router
from loglane.api.limits import BodyLimit
from loglane.api.metrics import ApiMetrics
from loglane.api.requests import request_router
from loglane.api.runtime import ServiceRuntime
from loglane.api.settings import ApiSettings
from loglane.api.tracing import FASTAPI_TRACES, TraceRequests
from loglane.api.views import view_router
from loglane.errors import ConfigurationError, LoglaneError
from loglane.landscape import Landscape
from loglane.logs.base import Log
from loglane.service import Service
from loglane.stores.base import Batch, Store

logger = logging.getLogger("loglane.api")


class ApiState:
    """What one app serves; `app.state.loglane`. Its `committed` is the workers' hook."""

    def __init__(self, runtimes: dict[str, ServiceRuntime], metrics: ApiMetrics) -> None:
        self.runtimes = runtimes
        self.metrics = metrics

    def committed(self, batch: Batch) -> None:
        """Pass as `Worker(on_commit=...)` to workers in this process: waiting requests are
        answered straight from the committed batch. Safe to call from any thread."""
        runtime = self.runtimes.get(batch.service)
        if runtime is not None and runtime.is_open:
            runtime.watcher.committed(batch)


def create_app(
    services: Landscape | Iterable[Service],
    log: Log,
    store_factory: Callable[[str], Store],
    *,
    tokens: Sequence[str] = (),
    settings: ApiSettings | None = None,
    title: str = "Loglane",
) -> FastAPI:
    """An ASGI app with the HTTP API of `services`, generated from their definitions.

    `store_factory(service_name)` opens a service's store; the app opens each on first use
    and closes it on shutdown. The log stays the caller's to close. With `tokens`, every
    route but `/healthz` needs `Authorization: Bearer <one of them>`.
    """
    services = list(services)
    if not services:
        raise ConfigurationError("the API needs at least one service to serve")
    if any(not token for token in tokens):
        raise ConfigurationError("an API token must not be empty")
    settings = settings or ApiSettings()
    appender = GroupWriter(partial(append_each, log))
    runtimes = {
        service.name: ServiceRuntime(service, log, store_factory, appender, settings)
        for service in services
    }
    metrics = ApiMetrics(runtimes)
    state = ApiState(runtimes, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for runtime in runtimes.values():
            try:
                await runtime.open()
            except LoglaneError as exc:
                # serve anyway: /readyz reports it and requests get 503 until it is back
                logger.warning("%s is not ready: %s", runtime.name, exc)
        try:
            yield
        finally:
            for runtime in runtimes.values():
                await runtime.close()

    app = FastAPI(
        title=title,
        summary="Commands, request tracking and views of "
        + ", ".join(service.name for service in services),
        version=_version(),
        lifespan=lifespan,
    )
    app.state.loglane = state
    app.include_router(health_router(runtimes, metrics))
    app.include_router(asyncapi_router(services))
    for name, runtime in runtimes.items():
        app.include_router(command_router(runtime, metrics, services), prefix=f"/{name}")
        app.include_router(request_router(runtime, services), prefix=f"/{name}")
        app.include_router(view_router(runtime), prefix=f"/{name}")

    @app.get("/", summary="What this server serves", operation_id="index")
    async def index() -> dict[str, Any]:
        return {
            "services": list(runtimes),
            "docs": "/docs",
            "openapi": "/openapi.json",
            "asyncapi": "/asyncapi.json",
        }

    install_error_handlers(app, list(runtimes))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # added last, so it runs first: an unauthenticated request touches nothing else
    app.add_middleware(BearerAuth, tokens=list(tokens))
    # the web console at /ui, whose login gate runs before BearerAuth; imported here, as it
    # is built on this package
    from loglane.console import install_console

    install_console(app, runtimes, tokens)
    if not FASTAPI_TRACES:
        app.add_middleware(TraceRequests)  # outermost: every request gets its span, 401s too
    if tokens:
        _document_bearer_auth(app)
    return app


def _document_bearer_auth(app: FastAPI) -> None:
    """Declare the bearer scheme in OpenAPI, so /docs can send a token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            app.openapi_schema = document_bearer_auth(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    from loglane import __version__

    return __version__
