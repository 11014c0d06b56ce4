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
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from loglane.errors import EnvelopeError
from loglane.records import Headers, Record

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"

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

    def headers(self) -> Headers:
        headers: list[tuple[str, bytes]] = [
            ("ce_specversion", b"1.0"),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_time", self.time.encode()),
            ("content-type", b"application/json"),
        ]
        if self.correlation_id is not None:
            headers.append(("ce_correlationid", self.correlation_id.encode()))
        if self.causation_id is not None:
            headers.append(("ce_causationid", self.causation_id.encode()))
        if self.traceparent is not None:
            headers.append(("ce_traceparent", self.traceparent.encode()))
        return tuple(headers)


_REQUIRED = ("ce_id", "ce_source", "ce_type")


def read_envelope(record: Record) -> Envelope:
    """The envelope of `record`; `EnvelopeError` says which attribute is missing or unreadable."""
    attributes: dict[str, str] = {}
    try:
        for name, value in record.headers:
            if name.startswith("ce_"):
                attributes[name] = value.decode()
    except UnicodeDecodeError as exc:
        raise EnvelopeError(
            f"header {name!r} is not UTF-8; CloudEvents attributes are text"
        ) from exc
    missing = [name for name in _REQUIRED if not attributes.get(name)]
    if missing:
        raise EnvelopeError(
            f"record has no {', '.join(missing)} header; post CloudEvents in binary content mode"
        )
    if attributes.get("ce_specversion", SPECVERSION) != SPECVERSION:
        raise EnvelopeError(
            f"ce_specversion {attributes['ce_specversion']!r} is not supported; use 1.0"
        )
    return Envelope(
        id=attributes["ce_id"],
        type=attributes["ce_type"],
        source=attributes["ce_source"],
        time=attributes.get("ce_time", ""),
        data=record.value,
        correlation_id=attributes.get("ce_correlationid"),
        causation_id=attributes.get("ce_causationid"),
        traceparent=attributes.get("ce_traceparent"),
    )


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    return str(uuid.uuid4())


def output_event_id(service: str, cause_id: str, index: int) -> str:
    """The id of the `index`-th event `service` emits while handling event `cause_id`.

    Derived, not random, so a batch re-run after a crash emits the very same ids and
    consumers can drop the duplicates.
    """
    return str(uuid.uuid5(_OUTPUT_ID_NAMESPACE, f"{service}\x00{cause_id}\x00{index}"))
