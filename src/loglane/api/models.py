"""The JSON bodies the HTTP API answers with (besides the services' own view rows)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from loglane.records import Message
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
