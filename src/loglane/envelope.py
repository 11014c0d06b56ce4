"""The CloudEvents 1.0 envelope in the Kafka protocol binding, binary content mode.

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
    ce_loglaneorigin   on events a Loglane worker emits: `topic/partition/offset/index`, the
                       input record whose handling emitted it and the event's index among
                       that record's events; consumers use it to drop re-published copies

(`ce_source`, `ce_id`) identifies an event, as CloudEvents says: two producers may use the
same id, and Loglane tells their events apart by source.
"""

from __future__ import annotations

import hashlib
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
COMMAND_SOURCE = "loglane"
"""The `ce_source` of commands that Loglane's own clients post (the HTTP API, `loglane send`,
`LandscapeTest.send`); request ids are unique within it."""

_OUTPUT_ID_NAMESPACE = uuid.UUID("6f6e3c36-3f1e-4b8e-9a52-6c6f676c616e")


@dataclass(frozen=True, slots=True, kw_only=True)
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

    @property
    def request_id(self) -> str:
        """The id of the request this event belongs to: its correlation id, else its own."""
        return self.correlation_id or self.id

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
    if cause.traceparent:
        headers += (("ce_traceparent", cause.traceparent.encode()),)
    return (*headers, ("ce_loglaneorigin", origin.encode()))


_REQUIRED = ("ce_id", "ce_source", "ce_type")


def read_envelope(record: Record) -> Envelope:
    """The envelope of `record`; `EnvelopeError` says which attribute is missing or unreadable."""
    headers = dict(record.headers)
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
        )
    except UnicodeDecodeError as exc:
        raise EnvelopeError("a ce_ header is not UTF-8; CloudEvents attributes are text") from exc


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


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
    digest = hashlib.sha1(_OUTPUT_ID_NAMESPACE.bytes + name.encode())
    # the same bytes as uuid.uuid5(), without building a UUID object on the hot path
    raw = bytearray(digest.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
