"""The CloudEvents envelope: what goes on the wire, and what is refused."""

from __future__ import annotations

import pytest

from loglane.envelope import Envelope, output_event_id, read_envelope
from loglane.errors import EnvelopeError
from loglane.records import Record


def record(headers: tuple[tuple[str, bytes], ...]) -> Record:
    return Record("t.in", 0, 0, b"k", b"{}", headers, 0)


def test_an_envelope_survives_the_trip_through_headers() -> None:
    envelope = Envelope(
        id="1",
        type="T",
        source="s",
        time="2026-01-01T00:00:00Z",
        data=b"{}",
        correlation_id="r",
        causation_id="c",
        traceparent="00-ab-cd-01",
    )
    assert read_envelope(record(envelope.headers())) == envelope


def test_headers_follow_the_kafka_protocol_binding_in_binary_mode() -> None:
    headers = dict(Envelope(id="1", type="T", source="s", time="now", data=b"{}").headers())
    assert headers == {
        "ce_specversion": b"1.0",
        "ce_id": b"1",
        "ce_source": b"s",
        "ce_type": b"T",
        "ce_time": b"now",
        "content-type": b"application/json",
    }


def test_a_record_without_required_attributes_is_refused_with_their_names() -> None:
    with pytest.raises(EnvelopeError, match="no ce_source, ce_type header"):
        read_envelope(record((("ce_id", b"1"),)))


def test_an_unsupported_spec_version_is_refused() -> None:
    headers = (("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"T"), ("ce_specversion", b"0.3"))
    with pytest.raises(EnvelopeError, match=r"use 1\.0"):
        read_envelope(record(headers))


def test_output_ids_are_stable_and_distinct_per_service_cause_and_index() -> None:
    assert output_event_id("a", "x", 0) == output_event_id("a", "x", 0)
    ids = {output_event_id(s, c, i) for s in "ab" for c in "xy" for i in range(2)}
    assert len(ids) == 8


def test_output_ids_are_name_based_uuids_anyone_can_recompute() -> None:
    import uuid

    from loglane.envelope import _OUTPUT_ID_NAMESPACE

    assert output_event_id("orders", "req-1", 2) == str(
        uuid.uuid5(_OUTPUT_ID_NAMESPACE, "orders\x00req-1\x002")
    )


def test_a_header_that_is_not_text_is_refused() -> None:
    headers = (("ce_id", b"\xff"), ("ce_source", b"s"), ("ce_type", b"T"))
    with pytest.raises(EnvelopeError, match="not UTF-8"):
        read_envelope(record(headers))
