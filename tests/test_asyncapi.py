"""The AsyncAPI document describes a landscape's topics and validates against the official
AsyncAPI 3.0.0 JSON schema (from the `@asyncapi/specs` npm package, fetched once with
`npm pack` into ~/.cache/loglane; never vendored)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from typer.testing import CliRunner

from loglane import Event, Service, Transaction
from loglane.api import create_app
from loglane.asyncapi import asyncapi_document
from loglane.cli import app as cli
from loglane.emitted import emitted_types
from loglane.examples.shop import CreateCustomer, landscape, orders
from loglane.urls import open_log, open_store

SPECS_PACKAGE = "@asyncapi/specs@6.11.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loglane"


@pytest.fixture(scope="module")
def official_schema() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 JSON schema, from the npm package the AsyncAPI initiative publishes."""
    cached = CACHE / "asyncapi-specs" / SPECS_PACKAGE.rsplit("@", 1)[1] / "3.0.0.json"
    if not cached.exists():
        with tempfile.TemporaryDirectory() as folder:
            subprocess.run(
                ["npm", "pack", SPECS_PACKAGE, "--pack-destination", folder],
                capture_output=True,
                timeout=300,
                check=True,
            )
            (tarball,) = Path(folder).glob("*.tgz")
            with tarfile.open(tarball) as archive:
                member = archive.extractfile("package/schemas/3.0.0.json")
                assert member is not None
                text = member.read()
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(text)
        partial.replace(cached)  # whole or absent, whatever runs alongside
    schema: dict[str, Any] = json.loads(cached.read_text())
    return schema


def problems(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema_rs.validator_for(schema)
    return [
        f"{'/'.join(map(str, error.instance_path))}: {error.message[:300]}"
        for error in validator.iter_errors(document)
    ]


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def resolve(document: dict[str, Any], reference: str) -> Any:
    assert reference.startswith("#/"), reference
    node: Any = document
    for token in reference[2:].split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_shops_document_is_valid_asyncapi_3(official_schema: dict[str, Any]) -> None:
    document = asyncapi_document(landscape, log_url="kafka://broker-1:9092,broker-2:9092")
    assert document["asyncapi"] == "3.0.0"
    assert problems(document, official_schema) == []
    assert document["servers"]["kafka"] == {
        "host": "broker-1:9092,broker-2:9092",
        "protocol": "kafka",
        "description": "the Kafka brokers of the landscape's log",
    }


def test_the_official_schema_refuses_a_broken_document(official_schema: dict[str, Any]) -> None:
    document = asyncapi_document(landscape)
    document["operations"]["customers.emit"]["action"] = "shout"
    del document["channels"]["orders.in"]["messages"]["PlaceOrder"]["payload"]["$ref"]
    document["channels"]["orders.in"]["messages"]["PlaceOrder"]["payload"]["type"] = 7
    found = problems(document, official_schema)
    assert len(found) >= 2, found


def test_every_reference_in_the_document_resolves() -> None:
    document = asyncapi_document(landscape)
    found = list(references(document))
    assert len(found) > 20
    for reference in found:
        assert resolve(document, reference) is not None, reference


def test_channels_are_each_services_input_output_and_dlq_topics() -> None:
    channels = asyncapi_document(landscape)["channels"]
    assert sorted(channels) == sorted(
        f"{service}.{topic}"
        for service in ("customers", "orders")
        for topic in ("in", "out", "dlq")
    )
    assert channels["customers.in"]["bindings"]["kafka"]["partitions"] == 4
    assert sorted(channels["customers.in"]["messages"]) == ["CreateCustomer"]
    assert sorted(channels["customers.out"]["messages"]) == ["CustomerCreated", "loglane.Rejected"]
    assert sorted(channels["orders.out"]["messages"]) == ["OrderPlaced", "loglane.Rejected"]
    assert sorted(channels["orders.dlq"]["messages"]) == ["DeadLetter"]


def test_a_message_carries_its_json_schema_and_cloudevents_headers() -> None:
    document = asyncapi_document(landscape)
    message = document["channels"]["customers.in"]["messages"]["CreateCustomer"]
    schema = resolve(document, message["payload"]["$ref"])
    assert schema == CreateCustomer.model_json_schema()
    headers = message["headers"]
    assert headers["properties"]["ce_type"]["const"] == "CreateCustomer"
    assert headers["properties"]["ce_specversion"]["const"] == "1.0"
    assert {"ce_id", "ce_source", "ce_type", "ce_specversion"} <= set(headers["required"])
    assert message["bindings"]["kafka"]["key"]["description"] == "the command's customer_id, UTF-8"
    assert message["correlationId"]["location"] == "$message.header#/ce_correlationid"
    emitted = document["channels"]["customers.out"]["messages"]["CustomerCreated"]
    assert "ce_loglaneorigin" in emitted["headers"]["required"]


def test_operations_say_what_each_service_receives_and_sends() -> None:
    operations = asyncapi_document(landscape)["operations"]
    summary = {
        name: (operation["action"], operation["channel"]["$ref"].rsplit("/", 1)[1])
        for name, operation in operations.items()
    }
    assert summary == {
        "customers.handleCommands": ("receive", "customers.in"),
        "customers.emit": ("send", "customers.out"),
        "customers.deadLetter": ("send", "customers.dlq"),
        "orders.handleCommands": ("receive", "orders.in"),
        "orders.emit": ("send", "orders.out"),
        "orders.deadLetter": ("send", "orders.dlq"),
        "orders.follow.customers": ("receive", "customers.out"),
    }
    assert operations["orders.follow.customers"]["messages"] == [
        {"$ref": "#/channels/customers.out/messages/CustomerCreated"}
    ]


def test_one_service_alone_still_describes_the_output_it_follows(
    official_schema: dict[str, Any],
) -> None:
    document = asyncapi_document([orders])
    assert sorted(document["channels"]["customers.out"]["messages"]) == ["CustomerCreated"]
    assert problems(document, official_schema) == []


def test_the_api_serves_the_document_and_the_cli_prints_it(tmp_path: Path) -> None:
    log = open_log(f"embedded:///{tmp_path}/log.db")
    app = create_app(
        landscape, log, lambda name: open_store(f"sqlite:///{tmp_path}/{name}.db", name)
    )

    async def read() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loglane") as client:
            return await client.get("/asyncapi.json"), await client.get("/")

    try:
        served, index = asyncio.run(read())
    finally:
        log.close()
    assert served.status_code == 200
    assert served.json() == asyncapi_document(landscape)
    assert index.json()["asyncapi"] == "/asyncapi.json"
    printed = CliRunner().invoke(cli, ["asyncapi", "loglane.examples.shop"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == asyncapi_document(landscape)


def test_the_emitted_types_are_those_built_in_emit_calls_and_those_followers_take() -> None:
    class Ping(Event):
        n: int

    class Pong(Event):
        n: int

    class Echoed(Event):
        n: int

    class Unseen(Event):
        n: int

    class Followed(Event):
        n: int

    pinger = Service("pinger")
    watcher = Service("watcher")

    @pinger.handles(Ping, key="n")
    def ping(command: Ping, tx: Transaction) -> None:
        tx.emit(Pong(n=command.n))
        tx.emit(Echoed.model_validate({"n": command.n}))
        unseen = Unseen(n=command.n)
        tx.emit(unseen)  # a variable: not seen

    @watcher.handles(Followed, source=pinger)
    def follow(event: Followed, tx: Transaction) -> None:
        pass

    def names(found: list[type[Event]]) -> list[str]:
        return [event_type.event_type for event_type in found]

    assert names(emitted_types(pinger, [pinger, watcher])) == [
        "Echoed",
        "Followed",
        "Pong",
        "loglane.Rejected",
    ]
    assert names(emitted_types(pinger)) == ["Echoed", "Pong", "loglane.Rejected"]
    assert emitted_types(watcher, [pinger, watcher]) == []  # no commands, emits nothing
