"""The dead-letter queue of a service: list what failed, and re-drive it once fixed.

Re-driving appends each dead letter back to the service's input topic. It keeps the correlation
id (its request is tracked as before) and gets a new event id derived from the place and the
id of the record that failed (its `loglane_source` and `ce_id` headers), so duplicate detection
lets it through once. Every copy of one dead letter gets that same id, so the worker applies it
once however many copies reach the input: a crash after a batch committed publishes its dead
letters again, and a re-drive repeated after a crash appends them again. The failed record's id
keeps apart two records at one place, as in a log recreated since (`loglane reset`). A
re-driven record that fails again is a new dead letter, from its own place in the input topic,
and can be re-driven once more.
A dead letter that came from another service's output topic carries `loglane_origin`, so the
worker routes it to the handler of that topic. How far the DLQ was re-driven is a fenced
position in the service's store, like any input position.
"""

from __future__ import annotations

from loglane.envelope import output_event_id
from loglane.logs.base import Log
from loglane.records import Message, Record, TopicPartition
from loglane.service import Service
from loglane.stores.base import Batch, Store

ERROR_HEADER = "loglane_error"
SOURCE_HEADER = "loglane_source"
ORIGIN_HEADER = "loglane_origin"


def dead_letters(log: Log, service: Service, store: Store | None = None) -> list[Record]:
    """The records in `service`'s DLQ; given the store, only those not re-driven yet."""
    redriven = store.positions(service.name) if store is not None else {}
    letters: list[Record] = []
    for partition, offsets in sorted(log.offsets(service.dlq_topic).items()):
        tp = TopicPartition(service.dlq_topic, partition)
        start = max(offsets.start, redriven.get(tp, 0))
        while start < offsets.end and (chunk := log.read(tp, start, 1000)):
            letters.extend(chunk)
            start = chunk[-1].offset + 1
    return letters


def redrive(log: Log, store: Store, service: Service) -> int:
    """Append every dead letter not re-driven yet to the input topic; return how many."""
    positions = store.positions(service.name)
    letters = dead_letters(log, service, store)
    if not letters:
        return 0
    log.append([_as_input(letter, service) for letter in letters])
    ends: dict[TopicPartition, int] = {}
    for letter in letters:
        ends[letter.topic_partition] = letter.offset + 1
    for tp, end in ends.items():
        store.commit(
            Batch(
                service=service.name, source=tp, expected_position=positions.get(tp), position=end
            )
        )
    return len(letters)


def _as_input(letter: Record, service: Service) -> Message:
    source = letter.header(SOURCE_HEADER)
    # A dead letter without its source (written by hand) is known only by its place in the DLQ.
    place = (
        source.decode()
        if source is not None
        else f"{letter.topic}:{letter.partition}:{letter.offset}"
    )
    headers: list[tuple[str, bytes]] = []
    for name, value in letter.headers:
        if name == "ce_id":
            cause = f"{place} {value.hex()}"
            headers.append((name, output_event_id(service.name, cause, 0).encode()))
        elif name == SOURCE_HEADER:
            origin = value.decode().rsplit(":", 2)[0]
            if origin != service.input_topic:
                headers.append((ORIGIN_HEADER, origin.encode()))
        elif name != ERROR_HEADER:
            headers.append((name, value))
    return Message(service.input_topic, letter.key, letter.value, tuple(headers))
