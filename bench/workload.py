"""The work every end-to-end benchmark measures: upsert one view row, emit one event."""

from __future__ import annotations

import time

from pydantic import BaseModel

from loglane import Event, Service, Transaction
from loglane.commands import command_message
from loglane.records import Message
from loglane.worker import Worker

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


def drain_rate(worker: Worker, events: int) -> float:
    """Events/s of `worker` handling a backlog of `events` records in passes as `Worker.run`
    makes them. The clock starts with the pass that takes the first records (joining a
    consumer group is not counted), and every record counts: a batch handled before the
    first commit is confirmed too."""
    started = time.perf_counter()
    while worker.run_once(timeout=0.1, send_ahead=True) == 0:
        started = time.perf_counter()
    while worker.handled < events:
        worker.run_once(timeout=0.1, send_ahead=True)
    return events / (time.perf_counter() - started)
