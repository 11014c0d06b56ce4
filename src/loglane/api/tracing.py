"""A server span around each HTTP request, when an OpenTelemetry SDK is configured.

The span continues the caller's trace (its `traceparent` header), and the command a POST sends
becomes its child (`loglane.tracing.sending`), so a trace starts at the client's request.
Without an SDK the middleware passes requests straight on. FastAPI versions that trace their
requests themselves (those with `fastapi.telemetry`) get no second span from here.
"""

from __future__ import annotations

import importlib.util

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loglane import tracing

FASTAPI_TRACES = importlib.util.find_spec("fastapi.telemetry") is not None


class TraceRequests:
    """ASGI middleware: one SERVER span per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = tracing.tracer() if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        parent = headers.get(b"traceparent", b"").decode("latin-1") or None
        method, path = scope["method"], scope["path"]
        with found.start_as_current_span(
            f"{method} {path}",
            context=tracing.context_of(parent),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, sending)
