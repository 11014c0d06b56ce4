"""What the console's pages are made of, without a browser: the graph's layout, the forms."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from loglane import Event
from loglane.console.forms import form_fields
from loglane.console.landscape import Figures, Follow, columns, follows, layout
from loglane.examples.shop import customers, orders


def test_a_follower_stands_one_column_right_of_what_it_follows() -> None:
    edges = follows([customers, orders])
    assert edges == [
        Follow(source="customers", follower="orders", event_types=("CustomerCreated",))
    ]
    assert columns(["customers", "orders"], edges) == {"customers": 0, "orders": 1}


def test_services_that_follow_each_other_stay_within_the_graph() -> None:
    edges = [
        Follow(source="a", follower="b", event_types=("X",)),
        Follow(source="b", follower="a", event_types=("Y",)),
    ]
    assert set(columns(["a", "b"], edges).values()) <= {0, 1}


def test_a_followed_service_this_server_does_not_serve_is_drawn_apart() -> None:
    graph = layout({"orders": orders}, {"orders": Figures(lag=0, dead_letters=0)})
    boxes = {box.name: box for box in graph.boxes}
    assert boxes["orders"].served
    assert not boxes["customers"].served
    assert [arrow.follow.follower for arrow in graph.arrows] == ["orders"]
    assert boxes["orders"].x > boxes["customers"].x


class Address(BaseModel):
    street: str


class Everything(Event):
    name: str = Field(min_length=2, max_length=5, pattern="^[a-z]+$")
    count: int = Field(gt=0, le=10)
    ratio: float = 0.5
    urgent: bool = False
    colour: Literal["red", "green"] = "red"
    note: str | None = None
    address: Address
    tags: list[str] = Field(default_factory=list)


def test_a_command_form_has_an_input_typed_by_each_field_of_its_schema() -> None:
    fields = {field.name: field for field in form_fields(Everything)}
    assert list(fields) == ["name", "count", "ratio", "urgent", "colour", "note", "address", "tags"]
    assert fields["name"].kind == "string"
    assert fields["name"].attributes == {"minlength": "2", "maxlength": "5", "pattern": "^[a-z]+$"}
    assert fields["count"].kind == "integer"
    assert fields["count"].attributes == {"step": "1", "min": "1", "max": "10"}
    assert fields["ratio"].value == "0.5"
    assert fields["urgent"].kind == "boolean"
    assert fields["colour"].options == ("red", "green")
    assert fields["note"].kind == "string"
    assert not fields["note"].required
    assert fields["address"].kind == "json"
    assert fields["address"].required
    assert fields["tags"].kind == "json"
