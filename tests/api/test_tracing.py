"""One request, one trace: the API's POST, both services' handlers and the events between."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once
from starlette.types import Message, Receive, Scope, Send

from loglane.api.tracing import TraceRequests
from loglane.envelope import Envelope, read_envelope
from loglane.records import TopicPartition
from tests.api.conftest import DEADLINE, Stack
from tests.conftest import eventually
from tests.processes import child_environment

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def _install(provider: TracerProvider | None) -> None:
    # OpenTelemetry lets a process set its provider once; tests put the default back after
    # themselves, the way OpenTelemetry's own test utilities do, through its private state.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _install(provider)
    yield exporter
    provider.shutdown()
    _install(None)


def test_one_post_is_one_trace_across_the_api_both_services_and_their_events(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    server = stack.serve()
    stack.start_workers(on_commit=server.state.committed)
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        response = client.post(
            "/customers/commands/CreateCustomer",
            params={"wait": 30},
            json={"customer_id": "ada", "name": "Ada Lovelace"},
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        )
        assert response.status_code == 200, response.text

    def named(name: str) -> ReadableSpan | None:
        return next((s for s in spans.get_finished_spans() if s.name == name), None)

    eventually(lambda: named("orders handle CustomerCreated") is not None, message="orders")
    chain = [
        "POST /customers/commands/CreateCustomer",
        "customers send CreateCustomer",
        "customers handle CreateCustomer",
        "customers.out publish CustomerCreated",
        "orders handle CustomerCreated",
    ]
    found = [named(name) for name in chain]
    assert all(found), [s.name for s in spans.get_finished_spans()]
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}

    def ancestors(span: ReadableSpan) -> list[int]:
        line = []
        while span.parent is not None:
            line.append(span.parent.span_id)
            if span.parent.span_id not in by_id:
                break
            span = by_id[span.parent.span_id]
        return line

    client_span = int(CLIENT_SPAN, 16)
    for cause, effect in zip([None, *found], found, strict=False):
        assert effect is not None
        assert f"{effect.context.trace_id:032x}" == CLIENT_TRACE
        expected = client_span if cause is None else cause.context.span_id
        assert expected in ancestors(effect), f"{effect.name} is not under its cause"
    handled = found[2]
    assert handled is not None
    assert handled.attributes is not None
    assert handled.attributes["loglane.request_id"] == response.json()["request_id"]
    assert handled.kind is trace.SpanKind.CONSUMER


def test_without_an_sdk_nothing_is_traced_and_the_callers_traceparent_goes_on(
    stack: Stack,
) -> None:
    assert trace.get_tracer_provider().__class__.__name__ == "ProxyTracerProvider"
    server = stack.serve()
    stack.start_workers(on_commit=server.state.committed)
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        response = client.post(
            "/customers/commands/CreateCustomer",
            params={"wait": 30},
            json={"customer_id": "bob", "name": "Bob"},
            headers={"traceparent": traceparent},
        )
        assert response.status_code == 200, response.text

    def outputs() -> list[Envelope]:  # published just after the commit that answered the wait
        return [
            read_envelope(record)
            for partition in stack.log.offsets("customers.out")
            for record in stack.log.read(TopicPartition("customers.out", partition), 0, 100)
        ]

    eventually(lambda: bool(outputs()), message="the event was published")
    assert [(e.type, e.traceparent) for e in outputs()] == [("CustomerCreated", traceparent)]


def test_the_request_span_of_fastapi_versions_that_do_not_trace_continues_the_callers_trace(
    spans: InMemorySpanExporter,
) -> None:
    async def hello(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode()
    scope = {"type": "http", "method": "GET", "path": "/nowhere"}
    asyncio.run(
        TraceRequests(hello)({**scope, "headers": [(b"traceparent", traceparent)]}, receive, send)
    )
    assert sent[0]["status"] == 404
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /nowhere"
    assert span.kind is trace.SpanKind.SERVER
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 404


def test_the_commands_set_up_an_sdk_from_the_otel_variables(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "loglane", "demo", "--no-serve", "--commands", "5"]
    environment = child_environment(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="shop")
    result = subprocess.run(
        [*command, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"name": "customers handle CreateCustomer"' in result.stdout
    assert '"service.name": "shop"' in result.stdout
