"""OpenTelemetry spans along a request's path, linked through the events' `ce_traceparent`.

    POST /{service}/commands/{type}     SERVER     the HTTP request (api/tracing.py)
      {service} send {type}             PRODUCER   the command appended to `{service}.in`
        {service} handle {type}         CONSUMER   each handler call, retries apart
          {topic} publish {type}        PRODUCER   each event the handler emits
            {follower} handle {type}    CONSUMER   a following service's handler, and so on

An event's `ce_traceparent` is the context of the span that sent it, so a handler's span is
the child of the span that emitted its event, in whichever process that ran.

Only `opentelemetry-api` is needed here. Without an SDK (no tracer provider set, as when
`loglane[otel]` is not installed or not configured) `tracer()` is None, the worker checks
that once per batch, and no span code runs at all.

An app may set up its own tracer provider. Otherwise `loglane run`, `worker`, `api` and `demo`
set one up from OpenTelemetry's standard variables when `loglane[otel]` is installed and
`OTEL_TRACES_EXPORTER` is `otlp` or `console`, or `OTEL_EXPORTER_OTLP_ENDPOINT` is set
(`configure_from_environment`); `OTEL_SERVICE_NAME` names the process (default `loglane`).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from loglane.errors import ConfigurationError

_PROPAGATOR = TraceContextTextMapPropagator()
NO_SPAN: AbstractContextManager[None] = nullcontext()
"""What stands for a span when there is no tracer: it does nothing."""


def tracer() -> Tracer | None:
    """Loglane's tracer, or None while no OpenTelemetry SDK is configured."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider.get_tracer("loglane")


def configure_from_environment(environ: Mapping[str, str] = os.environ) -> bool:
    """Set up an SDK tracer provider from the OTEL_ variables, unless one is set already or
    the variables ask for none; whether tracing is on after the call."""
    if tracer() is not None:
        return True
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not exporter and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        exporter = "otlp"
    if exporter not in ("otlp", "console"):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER={exporter} needs the OpenTelemetry SDK: "
            "pip install 'loglane[otel]'"
        ) from None
    name = environ.get("OTEL_SERVICE_NAME", "loglane")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # the last spans are exported before the process ends
    return True


def traceparent() -> str | None:
    """The W3C `traceparent` of the current span, None if there is none."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_of(parent: str | None) -> Context | None:
    """The context a W3C `traceparent` names, to start a span under; None without one."""
    return _PROPAGATOR.extract({"traceparent": parent}) if parent else None


def sending(service: str, command_type: str, parent: str | None) -> str | None:
    """A span for a command sent to `service` (under `parent`, a traceparent, if given,
    else the current span); the traceparent the command carries. None without an SDK."""
    found = tracer()
    if found is None:
        return parent
    # under the current span if there is one (the API's request span continues `parent`)
    current = trace.get_current_span().get_span_context().is_valid
    with found.start_as_current_span(
        f"{service} send {command_type}",
        context=None if current else context_of(parent),
        kind=SpanKind.PRODUCER,
        attributes={"messaging.destination.name": f"{service}.in", "loglane.service": service},
    ):
        return traceparent()


def publishing(found: Tracer, topic: str, event_type: str, event_id: str) -> str | None:
    """A span for one event emitted to `topic` under the current (handler's) span; the
    traceparent the event carries."""
    with found.start_as_current_span(
        f"{topic} publish {event_type}",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.destination.name": topic, "messaging.message.id": event_id},
    ):
        return traceparent()


@contextmanager
def handling(
    found: Tracer,
    service: str,
    event_type: str,
    parent: str | None,
    attributes: dict[str, str | int],
    not_failures: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """The span of one handler call, under the span that emitted its event (`parent`). An
    exception out of the handler marks the span failed, except those in `not_failures` (a
    rejection is an answer, not a failure)."""
    with found.start_as_current_span(
        f"{service} handle {event_type}",
        context=context_of(parent),
        kind=SpanKind.CONSUMER,
        attributes={"loglane.service": service, **attributes},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except not_failures:
            span.set_attribute("loglane.rejected", True)
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise


def trace_id() -> str | None:
    """The current trace's id in hex, for log lines; None outside a recorded span."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
