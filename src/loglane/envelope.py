"""The CloudEvents 1.0 envelope in the Kafka protocol binding.

Loglane writes binary content mode; it reads structured content mode too (below).

Every log backend stores records in this form, so a record written by one backend reads the
same in another, and a producer outside Python (or `kcat`) can post a command by hand:

    key                the partition key (UTF-8)
    value              the event's data as JSON
    ce_specversion     1.0
    ce_id              unique within ce_source; stable across re-runs for emitted events
    ce_source          the emitting service, or the client that posted a command
    ce_type            the event type, e.g. CreateCustomer
    ce_time            RFC 3339 timestamp
    content-type       application/json
    ce_correlationid   the request id that started the chain (optional)
    ce_causationid     the id of the event whose handling emitted this one (optional)
    ce_traceparent     W3C trace context (optional)
    ce_dataschema      `urn:loglane:<type>:v<N>` when the data is version N > 1 of its type
                       (see `loglane.events`); absent, the data is version 1
    ce_loglaneorigin   on events a Loglane worker emits: `topic/partition/offset/index`, the
                       input record whose handling emitted it and the event's index among
                       that record's events; consumers use it to drop re-published copies

(`ce_source`, `ce_id`) identifies an event, as CloudEvents says: two producers may use the
same id, and Loglane tells their events apart by source.

A record whose `content-type` is `application/cloudevents+json` is read in structured content
mode: the value is the whole event as a JSON object (`specversion`, `id`, `source`, `type`,
`time`, `datacontenttype`, `data`, and the extensions `correlationid`, `causationid`,
`traceparent`, `loglaneorigin`), and its ce_ headers, if any, are ignored. Any other
`content-type` must name JSON (`application/json`, `*/json`, `*/*+json`, UTF-8), since the
data is read as JSON; a record that says otherwise is refused into the DLQ.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from loglane.errors import EnvelopeError
from loglane.records import Headers, Record

SPECVERSION = "1.0"
_SPECVERSION_BYTES = SPECVERSION.encode()
CONTENT_TYPE = "application/json"
_CONTENT_TYPE_BYTES = CONTENT_TYPE.encode()
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
COMMAND_SOURCE = "loglane"
"""The `ce_source` of commands that Loglane's own clients post (the HTTP API, `loglane send`,
`LandscapeTest.send`); request ids are unique within it."""

_OUTPUT_ID_NAMESPACE = uuid.UUID("6f6e3c36-3f1e-4b8e-9a52-6c6f676c616e")


@dataclass(slots=True, kw_only=True)  # not frozen: cheaper to build per record; never changed
class Envelope:
    """The CloudEvents attributes of one record, and its data still as bytes."""

    id: str
    type: str
    source: str
    time: str
    data: bytes
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    origin: str | None = None
    dataschema: str | None = None

    @property
    def request_id(self) -> str:
        """The id of the request this event belongs to: its correlation id, else its own."""
        return self.correlation_id or self.id

    @property
    def version(self) -> int | None:
        """The version of the data, from a `dataschema` Loglane wrote (1 without one); None
        for a `dataschema` of another kind, which says nothing Loglane can read."""
        return data_version(self.type, self.dataschema)

    def headers(self) -> Headers:
        headers = (
            ("ce_specversion", _SPECVERSION_BYTES),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_time", self.time.encode()),
            ("content-type", b"application/json"),
        )
        optional = (
            ("ce_correlationid", self.correlation_id),
            ("ce_causationid", self.causation_id),
            ("ce_traceparent", self.traceparent),
            ("ce_loglaneorigin", self.origin),
            ("ce_dataschema", self.dataschema),
        )
        return headers + tuple((name, value.encode()) for name, value in optional if value)


def emitted_headers(
    *,
    id: str,
    type: str,
    source: bytes,
    time: bytes,
    cause: Envelope,
    origin: str,
    traceparent: str | None = None,
    dataschema: str | None = None,
) -> Headers:
    """The headers of an event a worker emits while handling `cause`: what
    `Envelope.headers` gives, built on the hot path from attributes that are already bytes
    (`source`, `time`) and without an `Envelope` in between."""
    headers: Headers = (
        ("ce_specversion", _SPECVERSION_BYTES),
        ("ce_id", id.encode()),
        ("ce_source", source),
        ("ce_type", type.encode()),
        ("ce_time", time),
        ("content-type", b"application/json"),
        ("ce_correlationid", cause.request_id.encode()),
        ("ce_causationid", cause.id.encode()),
    )
    traceparent = traceparent or cause.traceparent  # the emitting span's, when traced
    if traceparent:
        headers += (("ce_traceparent", traceparent.encode()),)
    if dataschema:
        headers += (("ce_dataschema", dataschema.encode()),)
    return (*headers, ("ce_loglaneorigin", origin.encode()))


_REQUIRED = ("ce_id", "ce_source", "ce_type")


def read_envelope(record: Record) -> Envelope:
    """The envelope of `record`; `EnvelopeError` says which attribute is missing or unreadable."""
    headers = dict(record.headers)
    content_type = headers.get("content-type")
    if (
        content_type is not None
        and content_type != _CONTENT_TYPE_BYTES
        and _media_type(content_type) == STRUCTURED_CONTENT_TYPE
    ):
        return read_structured_envelope(record)
    id_, source, type_ = headers.get("ce_id"), headers.get("ce_source"), headers.get("ce_type")
    if not (id_ and source and type_):
        missing = [name for name in _REQUIRED if not headers.get(name)]
        raise EnvelopeError(
            f"record has no {', '.join(missing)} header; post CloudEvents in binary content mode"
        )
    specversion = headers.get("ce_specversion")
    if specversion is not None and specversion != _SPECVERSION_BYTES:
        version = specversion.decode(errors="replace")
        raise EnvelopeError(f"ce_specversion {version!r} is not supported; use 1.0")
    correlation_id = headers.get("ce_correlationid")
    if b"\x00" in b"".join((id_, source, type_, correlation_id or b"")):
        raise EnvelopeError("a ce_ attribute holds a NUL character; CloudEvents ids are text")
    try:
        return Envelope(
            id=id_.decode(),
            type=type_.decode(),
            source=source.decode(),
            time=headers.get("ce_time", b"").decode(),
            data=record.value,
            correlation_id=_text(correlation_id),
            causation_id=_text(headers.get("ce_causationid")),
            traceparent=_text(headers.get("ce_traceparent")),
            origin=_text(headers.get("ce_loglaneorigin")),
            dataschema=_text(headers.get("ce_dataschema")),
        )
    except UnicodeDecodeError as exc:
        raise EnvelopeError("a ce_ header is not UTF-8; CloudEvents attributes are text") from exc


def identifying_envelope(record: Record) -> Envelope | None:
    """What a record that `read_envelope` refuses still says about itself (its id, source
    and request), so its request can be marked failed; None if it names no id and source."""
    headers = dict(record.headers)
    try:
        id_, source = headers["ce_id"].decode(), headers["ce_source"].decode()
        correlation_id = _text(headers.get("ce_correlationid"))
        type_ = headers.get("ce_type", b"").decode()
    except (KeyError, UnicodeDecodeError):
        return None
    if not (id_ and source) or "\x00" in id_ + source + (correlation_id or ""):
        return None
    return Envelope(
        id=id_, type=type_, source=source, time="", data=b"", correlation_id=correlation_id
    )


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _media_type(content_type: bytes) -> str:
    """The media type a `content-type` names, lower case; `EnvelopeError` unless it is JSON
    in UTF-8 or a structured CloudEvent."""
    text = content_type.decode("utf-8", errors="replace")
    media, *parameters = (part.strip().lower() for part in text.split(";"))
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
            raise EnvelopeError(
                f"content-type {text!r}: Loglane reads JSON in UTF-8 only; re-encode the value"
            )
    if media == "application/cloudevents-batch+json":
        raise EnvelopeError(
            "content-type application/cloudevents-batch+json: the Kafka binding has no batch "
            "mode; post one event per record"
        )
    if media == STRUCTURED_CONTENT_TYPE or _names_json(media):
        return media
    raise EnvelopeError(
        f"content-type {text!r} is not JSON: Loglane reads event data as JSON; post "
        f"content-type {CONTENT_TYPE} (binary mode) or {STRUCTURED_CONTENT_TYPE} (structured "
        "mode)"
    )


def _names_json(media: str) -> bool:
    """JSON as the CloudEvents JSON format counts it: `*/json` and `*/*+json`."""
    kind, _, subtype = media.partition("/")
    return bool(kind) and (subtype == "json" or subtype.endswith("+json"))


_STRUCTURED_TEXT = (
    "time",
    "correlationid",
    "causationid",
    "traceparent",
    "loglaneorigin",
    "dataschema",
)


def read_structured_envelope(record: Record) -> Envelope:
    """The envelope of a record in structured content mode: the whole event as a JSON object
    in the value. `EnvelopeError` says what is missing or unreadable.

    The event's `data` is written back to JSON for the handler's model; integers keep every
    digit, and a number no double can hold (`1e400`) is refused, as are `NaN` and `Infinity`.
    """
    try:
        event = json.loads(record.value, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"structured CloudEvent: the value is not JSON ({exc})") from None
    if not isinstance(event, dict):
        raise EnvelopeError("structured CloudEvent: the value must be a JSON object")
    missing = [name for name in ("id", "source", "type") if not event.get(name)]
    if missing:
        raise EnvelopeError(
            f"structured CloudEvent has no {', '.join(missing)}; CloudEvents requires them"
        )
    if event.get("specversion") != SPECVERSION:
        raise EnvelopeError(
            f"structured CloudEvent: specversion {event.get('specversion')!r} is not "
            f"supported; use {SPECVERSION!r}"
        )
    content_type = event.get("datacontenttype", CONTENT_TYPE)
    if not isinstance(content_type, str):
        raise EnvelopeError("structured CloudEvent: datacontenttype must be a string")
    if _media_type(content_type.encode()) == STRUCTURED_CONTENT_TYPE:
        raise EnvelopeError("structured CloudEvent: datacontenttype must name JSON data")
    if "data_base64" in event:
        raise EnvelopeError(
            "structured CloudEvent carries data_base64; Loglane events are JSON: put the "
            "payload in data"
        )
    if "data" not in event:
        raise EnvelopeError(
            "structured CloudEvent has no data; Loglane events carry their fields there"
        )
    try:
        data = json.dumps(event["data"], separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise EnvelopeError(
            "structured CloudEvent: a number in data is beyond what a double holds"
        ) from None
    attributes = {name: event.get(name) for name in ("id", "source", "type", *_STRUCTURED_TEXT)}
    for name, value in attributes.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise EnvelopeError(f"structured CloudEvent: {name} must be a string")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise EnvelopeError(
                f"structured CloudEvent: {name} holds a lone surrogate; attributes are text"
            ) from None
        if "\x00" in value:
            raise EnvelopeError(
                f"structured CloudEvent: {name} holds a NUL character; attributes are text"
            )
    return Envelope(
        id=event["id"],
        type=event["type"],
        source=event["source"],
        time=event.get("time") or "",
        data=data,
        correlation_id=event.get("correlationid"),
        causation_id=event.get("causationid"),
        traceparent=event.get("traceparent"),
        origin=event.get("loglaneorigin"),
        dataschema=event.get("dataschema"),
    )


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


_SCHEMA_PREFIX = "urn:loglane:"


def dataschema(event_type: str, version: int) -> str | None:
    """The `dataschema` of data at `version` of `event_type`: none for version 1."""
    return None if version == 1 else f"{_SCHEMA_PREFIX}{event_type}:v{version}"


def data_version(event_type: str, schema: str | None) -> int | None:
    """The version a `dataschema` names (1 without one); None if Loglane did not write it."""
    if schema is None:
        return 1
    prefix = f"{_SCHEMA_PREFIX}{event_type}:v"
    number = schema[len(prefix) :] if schema.startswith(prefix) else ""
    readable = number.isascii() and number.isdigit() and not number.startswith("0")
    return int(number) if readable else None


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so ids made together sit together in indexes."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        millis << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    )
    return str(uuid.UUID(int=value))


def output_event_id(
    service: str, cause_id: str, index: int, *, cause_source: str = COMMAND_SOURCE
) -> str:
    """The id of the `index`-th event `service` emits while handling event `cause_id` of
    `cause_source`.

    Derived, not random, so a batch re-run after a crash emits the very same ids and
    consumers can drop the duplicates; two causes that share an id but not a source get
    different ids.
    """
    name = f"{service}\x00{cause_id}\x00{index}"
    if cause_source != COMMAND_SOURCE:  # commands keep the ids they were given before
        name = f"{service}\x00{cause_source}\x00{cause_id}\x00{index}"
    h = hashlib.sha1(_OUTPUT_ID_NAMESPACE_BYTES + name.encode()).hexdigest()
    # what uuid.uuid5() gives, without a UUID object on the hot path: the digest's first 16
    # bytes with the version (5) and the RFC 9562 variant written over their bits
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_OUTPUT_ID_NAMESPACE_BYTES = _OUTPUT_ID_NAMESPACE.bytes
_VARIANT = {digit: "89ab"[int(digit, 16) & 0b11] for digit in "0123456789abcdef"}
"""The hex digit holding the variant bits (10xx) in place of a digest's digit."""
