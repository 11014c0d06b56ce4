"""Declaring services, views and handlers: mistakes are caught at declaration."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from loglane import ConfigurationError, Event, Landscape, Service, Transaction, load_landscape


class Ping(Event):
    target: str


class Row(BaseModel):
    target: str
    count: int


def test_a_service_names_its_topics_after_itself() -> None:
    service = Service("pings")
    assert (service.input_topic, service.output_topic, service.dlq_topic) == (
        "pings.in",
        "pings.out",
        "pings.dlq",
    )


def test_handlers_of_other_services_outputs_add_their_topics() -> None:
    service = Service("watcher")

    @service.handles(Ping, source="pinger")
    def watch(event: Ping, tx: Transaction) -> None: ...

    assert service.topics == ["watcher.in", "pinger.out"]
    assert service.commands == {}


@pytest.mark.parametrize("name", ["Upper", "1st", "with space", ""])
def test_a_bad_service_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="service name"):
        Service(name)


def test_a_view_key_must_be_a_field_of_its_model() -> None:
    with pytest.raises(ConfigurationError, match="has no field 'nope'"):
        Service("s").view("rows", Row, key="nope")


def test_a_command_key_must_be_a_field_of_the_command() -> None:
    with pytest.raises(ConfigurationError, match="no field 'nope'"):
        Service("s").handles(Ping, key="nope")


def test_a_key_cannot_be_chosen_for_another_services_events() -> None:
    with pytest.raises(ConfigurationError, match="keep the key their emitter gave them"):
        Service("s").handles(Ping, key="target", source="other")


def test_one_event_type_has_one_handler_per_topic() -> None:
    service = Service("s")
    service.handles(Ping, key="target")(lambda e, tx: None)
    with pytest.raises(ConfigurationError, match="already handles Ping"):
        service.handles(Ping, key="target")(lambda e, tx: None)


def test_an_event_type_defaults_to_its_class_name_and_can_be_set() -> None:
    class Custom(Event):
        event_type = "com.example.Custom"

    assert Ping.event_type == "Ping"
    assert Custom.event_type == "com.example.Custom"


def test_a_landscape_loads_from_module_and_attribute() -> None:
    assert [s.name for s in load_landscape("loglane.examples.shop:landscape")] == [
        "customers",
        "orders",
    ]
    assert len(load_landscape("tests.apps.ledger")) == 2
    assert isinstance(load_landscape("loglane.examples.shop"), Landscape)


def test_loading_a_missing_module_says_how_to_name_one() -> None:
    with pytest.raises(ConfigurationError, match="give a module path"):
        load_landscape("no.such.module")


def test_a_source_may_be_named_by_its_service() -> None:
    pinger, watcher = Service("pinger"), Service("watcher")

    @watcher.handles(Ping, source=pinger)
    def watch(event: Ping, tx: Transaction) -> None: ...

    assert watcher.topics == ["watcher.in", "pinger.out"]
    assert list(Landscape([pinger, watcher]).services) == ["pinger", "watcher"]


def test_a_source_the_landscape_does_not_have_is_refused_with_its_services() -> None:
    pinger, watcher = Service("pinger"), Service("watcher")

    @watcher.handles(Ping, source="pingr")
    def watch(event: Ping, tx: Transaction) -> None: ...

    with pytest.raises(ConfigurationError, match=r"from pingr.*services are pinger, watcher"):
        Landscape([pinger, watcher])
