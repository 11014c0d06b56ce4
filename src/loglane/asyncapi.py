"""The AsyncAPI 3.0 document of a landscape, generated from its services.

- channels: every service's topics: `<service>.in` (its commands), `<service>.out` (the events
  it emits) and `<service>.dlq` (its dead letters), with their Kafka bindings;
- messages: one per event type on a channel, its payload the type's JSON schema (pydantic's,
  shared under `components.schemas`), its headers the CloudEvents attributes in the Kafka
  protocol binding's binary content mode (docs/wire-format.md), its key the command's key field;
- operations: each service receives its input and the outputs it follows, and sends its output
  and its dead letters.

The output types of a service are found as `loglane.emitted` explains.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pydantic.json_schema import models_json_schema

from loglane.dlq import ERROR_HEADER, SOURCE_HEADER
from loglane.emitted import emitted_types
from loglane.envelope import CONTENT_TYPE, SPECVERSION
from loglane.events import Event
from loglane.service import Service

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
_SCHEMAS = "#/components/schemas/"


def asyncapi_document(
    services: Iterable[Service],
    *,
    title: str | None = None,
    version: str | None = None,
    log_url: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `services` as JSON-ready data.

    With a `kafka://` `log_url`, its brokers are the document's server.
    """
    services = list(services)
    names = ", ".join(service.name for service in services)
    events = _event_types(services)
    schemas, refs = _schemas(events)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for service in services:
        keys = {handler.event_type.event_type: handler.key_field for handler in service.handlers}
        channels[service.input_topic] = _channel(
            service,
            service.input_topic,
            f"Commands for {service.name}; anyone may post them",
            {
                name: _message(event_type, refs, key_field=keys.get(name))
                for name, event_type in sorted(service.commands.items())
            },
        )
        channels[service.output_topic] = _channel(
            service,
            service.output_topic,
            f"What {service.name} did: the events its handlers emit, correlated with their request",
            {
                event_type.event_type: _message(event_type, refs, emitted=True)
                for event_type in emitted_types(service, services)
            },
        )
        channels[service.dlq_topic] = _channel(
            service,
            service.dlq_topic,
            f"Records {service.name} could not handle, as they were, with why and where",
            {"DeadLetter": _dead_letter()},
        )
    for service in services:
        for handler in service.handlers:
            if handler.topic not in channels:  # the output of a service not described here
                source = handler.topic.removesuffix(".out")
                channels[handler.topic] = _channel(
                    service,
                    handler.topic,
                    f"What {source} did (only the events {service.name} follows)",
                    {},
                )
            messages = channels[handler.topic]["messages"]
            if handler.topic != service.input_topic:
                name = handler.event_type.event_type
                messages.setdefault(name, _message(handler.event_type, refs, emitted=True))
    for service in services:
        emitted = sorted(channels[service.output_topic]["messages"])
        operations.update(_operations(service, emitted))
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title or f"Loglane: {names}",
            "version": version or _version(),
            "description": "The topics of the services "
            f"{names}: what each receives, what it emits and where its failures go. Every "
            "record is a CloudEvent in the Kafka binding's binary content mode: the event's "
            "data as JSON in the value, its attributes in `ce_` headers.",
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas},
    }
    server = _server(log_url)
    if server is not None:
        document["servers"] = {"kafka": server}
    return document


def _event_types(services: list[Service]) -> list[type[Event]]:
    found: dict[type[Event], None] = {}
    for service in services:
        for handler in service.handlers:
            found[handler.event_type] = None
        for event_type in emitted_types(service, services):
            found[event_type] = None
    return list(found)


def _schemas(events: list[type[Event]]) -> tuple[dict[str, Any], dict[type[Event], str]]:
    """Every event type's JSON schema, and nested models', under unique names; and the `$ref`
    of each event type's schema."""
    if not events:
        return {}, {}
    mapping, top = models_json_schema(
        [(event_type, "validation") for event_type in events],
        ref_template=_SCHEMAS + "{model}",
    )
    refs = {event_type: mapping[(event_type, "validation")]["$ref"] for event_type in events}
    return dict(top.get("$defs", {})), refs


def _channel(
    service: Service, topic: str, description: str, messages: dict[str, Any]
) -> dict[str, Any]:
    return {
        "address": topic,
        "title": topic,
        "description": description,
        "messages": messages,
        "bindings": {
            "kafka": {
                "topic": topic,
                "partitions": service.partitions,
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _message(
    event_type: type[Event],
    refs: dict[type[Event], str],
    *,
    key_field: str | None = None,
    emitted: bool = False,
) -> dict[str, Any]:
    name = event_type.event_type
    if key_field is not None:
        key = {"type": "string", "description": f"the command's {key_field}, UTF-8"}
    elif emitted:
        key = {
            "type": "string",
            "description": "the key of the handler's input (a command's key field), or the "
            "event's own id",
        }
    else:
        key = {"type": "string", "description": "any key; records without one are spread"}
    message: dict[str, Any] = {
        "name": name,
        "title": name,
        "contentType": CONTENT_TYPE,
        "headers": _cloudevent_headers(name, emitted=emitted),
        "payload": {"$ref": refs[event_type]},
        "correlationId": {
            "description": "the request id, carried by every event its handling causes",
            "location": "$message.header#/ce_correlationid",
        },
        "bindings": {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING_VERSION}},
    }
    summary = (event_type.__doc__ or "").strip().split("\n\n", 1)[0]
    if summary and event_type.__doc__ != Event.__doc__:
        message["summary"] = " ".join(summary.split())
    return message


def _cloudevent_headers(event_type: str | None, *, emitted: bool = False) -> dict[str, Any]:
    def text(description: str, **more: Any) -> dict[str, Any]:
        return {"type": "string", "description": description, **more}

    properties: dict[str, Any] = {
        "ce_specversion": text("CloudEvents spec version", const=SPECVERSION),
        "ce_id": text("the event's id, unique within ce_source"),
        "ce_source": text(
            "the emitting service"
            if emitted
            else "who posted it (`loglane` for Loglane's own clients)"
        ),
        "ce_type": text("the event type")
        if event_type is None
        else text("the event type", const=event_type),
        "ce_time": text("when it was created (RFC 3339)", format="date-time"),
        "content-type": text("the value's media type", const=CONTENT_TYPE),
        "ce_correlationid": text("the request id that started the chain"),
        "ce_causationid": text("the id of the event whose handling emitted this one"),
        "ce_traceparent": text("W3C trace context"),
    }
    required = ["ce_specversion", "ce_id", "ce_source", "ce_type"]
    if emitted:
        properties["ce_loglaneorigin"] = text(
            "topic/partition/offset/index of the input record whose handling emitted it; "
            "consumers drop re-published copies by it"
        )
        required += ["ce_time", "ce_correlationid", "ce_loglaneorigin"]
    return {"type": "object", "properties": properties, "required": required}


def _dead_letter() -> dict[str, Any]:
    headers = _cloudevent_headers(None)
    headers["properties"][ERROR_HEADER] = {
        "type": "string",
        "description": "why it failed: the reason, then the handler's traceback if any",
    }
    headers["properties"][SOURCE_HEADER] = {
        "type": "string",
        "description": "topic:partition:offset of the record that failed",
    }
    headers["required"] = [ERROR_HEADER, SOURCE_HEADER]
    return {
        "name": "DeadLetter",
        "title": "Dead letter",
        "summary": "A record that could not be handled, its value and headers as they were",
        "description": "Its value is the failed record's, unchanged: usually one of the "
        "service's commands or followed events, but possibly anything (a record that was "
        "not a CloudEvent). See `loglane dlq show`.",
        "headers": headers,
        "payload": {},
    }


def _operations(service: Service, emitted: list[str]) -> dict[str, Any]:
    def refs(topic: str, names: Iterable[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{_pointer(topic)}/messages/{_pointer(n)}"} for n in names]

    def operation(action: str, topic: str, title: str, names: Iterable[str]) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{_pointer(topic)}"},
            "title": title,
            "messages": refs(topic, names),
        }

    name = service.name
    found = {
        f"{name}.handleCommands": operation(
            "receive",
            service.input_topic,
            f"{name} handles its commands",
            sorted(service.commands),
        ),
        f"{name}.emit": operation(
            "send",
            service.output_topic,
            f"{name} emits what happened",
            emitted,
        ),
        f"{name}.deadLetter": operation(
            "send", service.dlq_topic, f"{name} dead-letters what it cannot handle", ["DeadLetter"]
        ),
    }
    for topic in service.topics[1:]:
        followed = sorted(
            handler.event_type.event_type for handler in service.handlers if handler.topic == topic
        )
        found[f"{name}.follow.{topic.removesuffix('.out')}"] = operation(
            "receive", topic, f"{name} follows {topic}", followed
        )
    return found


def _pointer(name: str) -> str:
    """`name` as one JSON Pointer token."""
    return name.replace("~", "~0").replace("/", "~1")


def _server(log_url: str | None) -> dict[str, Any] | None:
    if log_url is None:
        return None
    parts = urlsplit(log_url)
    if parts.scheme != "kafka" or not parts.netloc:
        return None
    return {
        "host": parts.netloc.rsplit("@", 1)[-1],
        "protocol": "kafka",
        "description": "the Kafka brokers of the landscape's log",
    }


def _version() -> str:
    from loglane import __version__

    return __version__
