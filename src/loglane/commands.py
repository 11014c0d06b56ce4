"""Posting commands: a command becomes a CloudEvent on its service's input topic."""

from __future__ import annotations

from pydantic_core import to_json

from loglane import tracing
from loglane.envelope import COMMAND_SOURCE, Envelope, dataschema, new_event_id, now_rfc3339
from loglane.events import Event
from loglane.logs.base import Log
from loglane.records import Message, Position
from loglane.service import Service


def command_message(
    service: Service,
    command: Event,
    *,
    request_id: str | None = None,
    source: str = COMMAND_SOURCE,
    traceparent: str | None = None,
) -> tuple[str, Message]:
    """The request id and the message that posts `command` to `service`'s input topic.

    The request id is the command's CloudEvents id and its correlation id: every event
    emitted while handling it, in any service, carries it on.
    """
    key = service.partition_key(command)
    request_id = request_id or new_event_id()
    traceparent = tracing.sending(service.name, command.event_type, traceparent)
    envelope = Envelope(
        id=request_id,
        type=command.event_type,
        source=source,
        time=now_rfc3339(),
        data=to_json(command),
        correlation_id=request_id,
        traceparent=traceparent,
        dataschema=dataschema(command.event_type, command.event_version),
    )
    return request_id, Message(service.input_topic, key, envelope.data, envelope.headers())


def post(
    log: Log, service: Service, command: Event, *, request_id: str | None = None
) -> tuple[str, Position]:
    """Append `command` durably to `service`'s input; return its request id and position."""
    request_id, message = command_message(service, command, request_id=request_id)
    (position,) = log.append([message])
    return request_id, position
