"""The work every end-to-end benchmark measures: upsert one view row, emit one event."""

from __future__ import annotations

from pydantic import BaseModel

from loglane import Event, Service, Transaction
from loglane.commands import command_message
from loglane.records import Message

PARTITIONS = 4


class SetValue(Event):
    key: str
    value: int


class ValueSet(Event):
    key: str
    value: int


class Item(BaseModel):
    key: str
    value: int


def bench_service(name: str) -> Service:
    """A one-handler service: upsert the item, emit that it was set."""
    service = Service(name, partitions=PARTITIONS)
    items = service.view("items", Item, key="key")

    @service.handles(SetValue, key="key")
    def set_value(command: SetValue, tx: Transaction) -> None:
        tx[items].put(Item(key=command.key, value=command.value))
        tx.emit(ValueSet(key=command.key, value=command.value))

    return service


def commands(service: Service, start: int, stop: int) -> list[Message]:
    """Commands `start` to `stop` of the backlog, over 10,000 keys."""
    return [
        command_message(service, SetValue(key=f"k{i % 10_000}", value=i))[1]
        for i in range(start, stop)
    ]
