"""A client that is not Loglane's: kcat (librdkafka's command line, from Debian's packages,
installed by scripts/kcat) posts commands on the real broker in both CloudEvents content
modes, and reads what the service made of them.

A worker handles the binary-mode and the structured-mode command alike, emits its events in
binary mode with the CloudEvents headers kcat then reads back, and sends a `text/plain`
record to the DLQ with the reason, instead of parsing it as JSON.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from loglane import Event, Service, Transaction
from loglane.envelope import output_event_id
from loglane.testing import LandscapeTest
from tests.kafka_broker import Broker, delete_landscape

pytestmark = pytest.mark.kafka

KCAT = Path(__file__).resolve().parent.parent.parent / "scripts" / "kcat"

# A name of its own per run: the shared broker may hold another session's topics.
meters = Service(f"meters{uuid.uuid4().hex[:8]}", partitions=2)


class Reading(Event):
    meter: str
    value: int


class Read(Event):
    meter: str
    value: int


class Meter(BaseModel):
    meter: str
    value: int


meter_view = meters.view("meters", Meter, key="meter")


@meters.handles(Reading, key="meter")
def read(command: Reading, tx: Transaction) -> None:
    tx[meter_view].put(Meter(meter=command.meter, value=command.value))
    tx.emit(Read(meter=command.meter, value=command.value))


@pytest.fixture(scope="module")
def kcat() -> str:
    """kcat's path; scripts/kcat installs it when it is missing."""
    done = subprocess.run(
        [str(KCAT), "install"], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def broker(kafka_broker: Broker) -> Iterator[Broker]:
    yield kafka_broker
    delete_landscape(kafka_broker, [meters])


def produce(kcat: str, broker: Broker, key: str, value: str, headers: dict[str, str]) -> None:
    """One record, produced by kcat (`-P`), with `-H name=value` headers."""
    arguments = [kcat, "-P", "-b", broker.bootstrap, "-t", meters.input_topic, "-k", key]
    for name, header in headers.items():
        arguments += ["-H", f"{name}={header}"]
    done = subprocess.run(
        arguments, input=value + "\n", capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def consume(kcat: str, broker: Broker, topic: str) -> list[dict[str, object]]:
    """Every record of `topic`, read by kcat (`-C -e -J`: to the end, as JSON)."""
    done = subprocess.run(
        [kcat, "-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def headers_of(record: dict[str, object]) -> dict[str, str]:
    """kcat -J lists headers as [name, value, name, value, ...]."""
    flat = record.get("headers") or []
    assert isinstance(flat, list)
    return dict(zip(flat[::2], flat[1::2], strict=True))


def test_kcat_posts_in_both_content_modes_and_reads_the_cloudevents_a_worker_emits(
    kcat: str, broker: Broker, tmp_path: Path
) -> None:
    with LandscapeTest(
        meters,
        log_url=broker.url(connect_timeout=30),
        db_url=f"sqlite:///{tmp_path}/{{service}}.db",
    ) as test:
        produce(
            kcat,
            broker,
            "binary",
            json.dumps({"meter": "binary", "value": 1}),
            {
                "ce_specversion": "1.0",
                "ce_id": "kcat-1",
                "ce_source": "kcat",
                "ce_type": "Reading",
                "ce_time": "2026-01-01T00:00:00Z",
                "content-type": "application/json",
            },
        )
        structured = {
            "specversion": "1.0",
            "id": "kcat-2",
            "source": "kcat",
            "type": "Reading",
            "time": "2026-01-01T00:00:01Z",
            "datacontenttype": "application/json",
            "data": {"meter": "structured", "value": 2},
        }
        produce(
            kcat,
            broker,
            "structured",
            json.dumps(structured),
            {"content-type": "application/cloudevents+json"},
        )
        produce(
            kcat,
            broker,
            "plain",
            "meter=plain value=3",
            {
                "ce_id": "kcat-3",
                "ce_source": "kcat",
                "ce_type": "Reading",
                "content-type": "text/plain",
            },
        )

        view = test.view(meter_view)
        deadline = time.monotonic() + 120
        while not (
            view.get("structured") and view.get("binary") and test.dead_letters(meters.name)
        ):
            assert time.monotonic() < deadline, "the worker did not handle kcat's records in time"
            for worker in test.workers:
                worker.run_once(timeout=0.2)

        assert view.get("binary") == Meter(meter="binary", value=1)
        assert view.get("structured") == Meter(meter="structured", value=2)
        assert view.get("plain") is None

    emitted = {str(r["key"]): r for r in consume(kcat, broker, meters.output_topic)}
    assert sorted(emitted) == ["binary", "structured"]
    for key, cause in (("binary", "kcat-1"), ("structured", "kcat-2")):
        headers = headers_of(emitted[key])
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_type"] == "Read"
        assert headers["ce_source"] == meters.name
        assert headers["ce_id"] == output_event_id(meters.name, cause, 0, cause_source="kcat")
        assert headers["ce_causationid"] == cause
        assert headers["ce_correlationid"] == cause
        assert headers["content-type"] == "application/json"
        assert headers["ce_time"].endswith("Z")
        assert json.loads(str(emitted[key]["payload"]))["meter"] == key

    (letter,) = consume(kcat, broker, meters.dlq_topic)
    assert letter["payload"] == "meter=plain value=3"
    assert "content-type 'text/plain' is not JSON" in headers_of(letter)["loglane_error"]
