"""The JSON bodies the HTTP API answers with (besides the services' own view rows)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any, Literal, Union

from pydantic import BaseModel, Field, create_model

from loglane.emitted import emitted_types
from loglane.events import Event
from loglane.records import Message
from loglane.service import Service
from loglane.stores.base import RequestStatus


class OutputEvent(BaseModel):
    """An event a service emitted while handling a request, as a CloudEvent in JSON."""

    id: str
    type: str
    source: str
    time: str
    correlation_id: str | None = None
    causation_id: str | None = None
    data: Any = Field(description="the event's fields")


class CommandAccepted(BaseModel):
    """The command is durably appended to the service's input; a worker will handle it."""

    request_id: str
    position: str = Field(description="pass as ?position= to a view read to see its effect")
    status: RequestStatus = RequestStatus.PENDING


class RequestState(BaseModel):
    """Where a request stands, and the events it produced once handled."""

    request_id: str
    status: RequestStatus
    position: str | None = Field(
        default=None, description="the command's place in the input, when this API accepted it"
    )
    detail: str | None = Field(default=None, description="why it was rejected or failed")
    events: list[OutputEvent] = Field(default_factory=list)


def request_state_model(service: Service, landscape: Sequence[Service]) -> type[RequestState]:
    """`RequestState` as `service` answers it, for its OpenAPI document: each event typed as
    one of the events the service emits (its `type` and the model of its `data`), or as any
    other event, since not every emitted type can be known (see `loglane.emitted`).

    It documents the body; the body itself is built as a plain `RequestState`, so an event
    of an older shape is answered as it was emitted, never refused.
    """
    return _request_state_model(service, tuple(landscape))


@functools.cache
def _request_state_model(service: Service, landscape: tuple[Service, ...]) -> type[RequestState]:
    prefix = _camel(service.name)
    variants: list[type[OutputEvent]] = [
        _typed_event(prefix, event_type) for event_type in emitted_types(service, landscape)
    ]
    event = Union[(*variants, OutputEvent)]  # type: ignore[valid-type]
    model: type[RequestState] = create_model(
        f"{prefix}RequestState",
        __base__=RequestState,
        __doc__=f"Where a request to {service.name} stands, and the events it produced.",
        events=(list[event], Field(default_factory=list)),
    )
    return model


def _typed_event(prefix: str, event_type: type[Event]) -> type[OutputEvent]:
    name = event_type.event_type
    model: type[OutputEvent] = create_model(
        f"{prefix}{_camel(name)}Event",
        __base__=OutputEvent,
        __doc__=f"A {name} event, as a CloudEvent in JSON.",
        type=(Literal[name], ...),  # type: ignore[arg-type]
        data=(event_type, ...),
    )
    return model


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name))


class Problem(BaseModel):
    """An error: what went wrong and what to do about it."""

    detail: str


def output_event(message: Message) -> OutputEvent:
    """The CloudEvent a worker emitted, read from its Kafka-binding headers."""
    attributes = {name: value.decode(errors="replace") for name, value in message.headers}
    try:
        data: Any = json.loads(message.value)
    except ValueError:
        data = message.value.decode(errors="replace")
    return OutputEvent(
        id=attributes.get("ce_id", ""),
        type=attributes.get("ce_type", ""),
        source=attributes.get("ce_source", ""),
        time=attributes.get("ce_time", ""),
        correlation_id=attributes.get("ce_correlationid"),
        causation_id=attributes.get("ce_causationid"),
        data=data,
    )
