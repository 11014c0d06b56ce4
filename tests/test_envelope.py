"""The CloudEvents envelope: what goes on the wire, and what is refused."""

from __future__ import annotations

import json
import re
from typing import Annotated

import pytest
from pydantic import BaseModel, Field

from loglane import Event, Service, Transaction
from loglane.envelope import Envelope, output_event_id, read_envelope
from loglane.errors import EnvelopeError
from loglane.records import Message, Record
from loglane.testing import LandscapeTest


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


# -- structured content mode and content types ------------------------------------------------


STRUCTURED = b"application/cloudevents+json"


def structured(event: dict[str, object], content_type: bytes = STRUCTURED) -> Record:
    return Record(
        "t.in", 0, 0, b"k", json.dumps(event).encode(), (("content-type", content_type),), 0
    )


EVENT: dict[str, object] = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "kcat",
    "type": "Reading",
    "time": "2026-01-01T00:00:00Z",
    "datacontenttype": "application/json",
    "correlationid": "r-1",
    "traceparent": "00-ab-cd-01",
    "data": {"meter": "m", "value": 7},
}


def test_a_structured_event_reads_as_the_same_event_in_binary_mode() -> None:
    assert read_envelope(structured(EVENT)) == Envelope(
        id="e-1",
        type="Reading",
        source="kcat",
        time="2026-01-01T00:00:00Z",
        data=b'{"meter":"m","value":7}',
        correlation_id="r-1",
        traceparent="00-ab-cd-01",
    )


def test_a_structured_event_is_read_from_its_value_whatever_its_ce_headers_say() -> None:
    value = json.dumps(EVENT).encode()
    headers = (
        ("ce_id", b"other"),
        ("content-type", b"application/cloudevents+json; charset=utf-8"),
    )
    assert read_envelope(Record("t.in", 0, 0, b"k", value, headers, 0)).id == "e-1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": None, "type": ""}, "has no id, type"),
        ({"specversion": "0.3"}, "specversion '0.3' is not supported"),
        ({"data": None, "data_base64": "AAE="}, "data_base64"),
        ({"datacontenttype": "text/plain"}, "'text/plain' is not JSON"),
        ({"source": 5}, "source must be a string"),
        ({"correlationid": "a\x00b"}, "NUL"),
        ({"causationid": "\ud800"}, "lone surrogate"),
    ],
)
def test_a_structured_event_that_breaks_the_spec_is_refused_with_the_reason(
    change: dict[str, object], reason: str
) -> None:
    event = {**EVENT, **change}
    event = {name: value for name, value in event.items() if value is not None}
    with pytest.raises(EnvelopeError, match=re.escape(reason)):
        read_envelope(structured(event))


def test_a_structured_value_that_is_not_a_json_object_is_refused() -> None:
    for value in (b"[1, 2]", b"{not json", b'{"data": NaN}'):
        with pytest.raises(EnvelopeError, match="structured CloudEvent"):
            read_envelope(Record("t.in", 0, 0, b"k", value, (("content-type", STRUCTURED),), 0))


def test_a_structured_event_without_data_is_refused() -> None:
    event = {name: value for name, value in EVENT.items() if name != "data"}
    with pytest.raises(EnvelopeError, match="has no data"):
        read_envelope(structured(event))


BINARY = (("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"T"))


@pytest.mark.parametrize(
    "content_type", [b"text/plain", b"application/avro", b"application/x-protobuf", b"text/csv"]
)
def test_a_record_whose_content_type_is_not_json_is_refused_not_parsed(content_type: bytes) -> None:
    with pytest.raises(EnvelopeError, match="is not JSON: Loglane reads event data as JSON"):
        read_envelope(record((*BINARY, ("content-type", content_type))))


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"Application/JSON",
        b"text/json",
        b"application/vnd.acme.reading+json",
    ],
)
def test_binary_mode_takes_every_content_type_that_names_json(content_type: bytes) -> None:
    assert read_envelope(record((*BINARY, ("content-type", content_type)))).id == "1"


def test_json_in_another_charset_than_utf8_is_refused() -> None:
    headers = (*BINARY, ("content-type", b"application/json; charset=iso-8859-1"))
    with pytest.raises(EnvelopeError, match="UTF-8 only"):
        read_envelope(record(headers))


def test_the_batch_format_is_refused_since_the_kafka_binding_has_no_batch_mode() -> None:
    headers = (*BINARY, ("content-type", b"application/cloudevents-batch+json"))
    with pytest.raises(EnvelopeError, match="one event per record"):
        read_envelope(record(headers))


# -- integers beyond 2^53 ---------------------------------------------------------------------


def test_structured_data_keeps_every_digit_of_integers_beyond_2_to_the_53() -> None:
    big = 2**53 + 1, 2**63 + 1, -(2**70) - 3
    event = {**EVENT, "data": {"values": list(big)}}
    envelope = read_envelope(structured(event))
    assert json.loads(envelope.data) == {"values": list(big)}


def test_structured_data_with_a_number_no_double_holds_is_refused() -> None:
    value = json.dumps(EVENT).replace('"value": 7', '"value": 1e400').encode()
    with pytest.raises(EnvelopeError, match="beyond what a double holds"):
        read_envelope(Record("t.in", 0, 0, b"k", value, (("content-type", STRUCTURED),), 0))


meters = Service("meters")


class Reading(Event):
    meter: str
    value: int


class Portable(Event):
    """A reading bounded to the integers every JSON parser holds exactly (RFC 7493)."""

    meter: str
    value: Annotated[int, Field(ge=-(2**53) + 1, le=2**53 - 1)]


class Read(Event):
    meter: str
    value: int


class Meter(BaseModel):
    meter: str
    value: int


meter_view = meters.view("meters", Meter, key="meter")


@meters.handles(Reading, key="meter")
def read_meter(command: Reading, tx: Transaction) -> None:
    tx[meter_view].put(Meter(meter=command.meter, value=command.value))
    tx.emit(Read(meter=command.meter, value=command.value))


@meters.handles(Portable, key="meter")
def read_portable(command: Portable, tx: Transaction) -> None:
    tx[meter_view].put(Meter(meter=command.meter, value=command.value))


def test_a_service_keeps_integers_beyond_2_to_the_53_exact_in_views_and_events() -> None:
    with LandscapeTest(meters) as test:
        for meter, value in (("a", 2**53 + 1), ("b", 2**63 + 1), ("c", -(2**80))):
            request_id = test.send(Reading(meter=meter, value=value))
            test.run_until_quiet()
            outcome = test.outcome(request_id)
            assert outcome is not None
            assert outcome.status == "done"
            assert test.view(meter_view).get(meter) == Meter(meter=meter, value=value)
            assert json.loads(test.events("meters")[-1].data)["value"] == value


def test_a_field_bounded_to_2_to_the_53_sends_a_larger_integer_to_the_dlq() -> None:
    with LandscapeTest(meters) as test:
        value = b'{"meter": "a", "value": 9007199254740993}'  # 2^53 + 1
        headers = (*BINARY[:2], ("ce_type", b"Portable"), ("content-type", b"application/json"))
        test.log.append([Message("meters.in", b"a", value, headers)])
        test.run_until_quiet()
        (letter,) = test.dead_letters("meters")
        assert (
            "less than or equal to 9007199254740991"
            in dict(letter.headers)["loglane_error"].decode()
        )
        assert test.view(meter_view).get("a") is None


def test_a_worker_handles_a_structured_command_and_dead_letters_a_text_one() -> None:
    with LandscapeTest(meters) as test:
        event = {**EVENT, "data": {"meter": "m", "value": 2**60}}
        plain = (*BINARY[:2], ("ce_type", b"Reading"), ("content-type", b"text/plain"))
        test.log.append(
            [
                Message(
                    "meters.in", b"m", json.dumps(event).encode(), (("content-type", STRUCTURED),)
                ),
                Message("meters.in", b"t", b"meter=t value=1", plain),
            ]
        )
        test.run_until_quiet()
        assert test.view(meter_view).get("m") == Meter(meter="m", value=2**60)
        outcome = test.stores["meters"].request("meters", "r-1", source="kcat")
        assert outcome is not None
        assert outcome.status == "done"
        (letter,) = test.dead_letters("meters")
        assert letter.value == b"meter=t value=1"
        assert (
            "content-type 'text/plain' is not JSON"
            in dict(letter.headers)["loglane_error"].decode()
        )
