"""The dead-letter queue of a service: list and show what failed, re-drive it once fixed, or
drop it.

A dead letter is known by its place in `<service>.dlq`, `partition:offset` (its `id`).

Re-driving appends a dead letter back to the service's input topic. It keeps the correlation
id (its request is tracked as before) and gets a new event id derived from the place and the
id of the record that failed (its `loglane_source` and `ce_id` headers), so duplicate detection
lets it through once. Every copy of one dead letter gets that same id, so the worker applies it
once however many copies reach the input: a crash after a batch committed publishes its dead
letters again, and a re-drive repeated after a crash appends them again. The failed record's id
keeps apart two records at one place, as in a log recreated since (`loglane reset`). A
re-driven record that fails again is a new dead letter, from its own place in the input topic,
and can be re-driven once more.
A dead letter that came from another service's output topic carries `loglane_origin`, so the
worker routes it to the handler of that topic.

What was handled is kept in the service's store, written like any input position (fenced):

- re-driving every pending letter moves the DLQ partition's position past them, so the letters
  before a partition's position were re-driven;
- a letter re-driven alone, or dropped, is marked one by one: each mark is a batch of the
  partition's *marks source* (`<service>.dlq#handled`, a name no topic can have, with a
  position that only counts the marks), whose applied ids say `"<offset> redriven <ms>"` or
  `"<offset> dropped <ms>"` (`ms`: the letter's timestamp, which tells it from a letter at
  the same offset of a DLQ recreated since). A dropped letter is never re-driven, not even
  past the position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from loglane.envelope import output_event_id
from loglane.errors import LoglaneError, StaleBatchError
from loglane.logs.base import Log
from loglane.parking import REDRIVEN_HEADER, unpark_message
from loglane.records import Message, Record, TopicPartition
from loglane.service import Service
from loglane.stores.base import Batch, Store

ERROR_HEADER = "loglane_error"
SOURCE_HEADER = "loglane_source"
ORIGIN_HEADER = "loglane_origin"
_MARKS_SUFFIX = "#handled"
_MARK_ATTEMPTS = 20


class UnknownDeadLetterError(LoglaneError):
    """No dead letter of the service has that id (`partition:offset`)."""


class DeadLetterHandledError(LoglaneError):
    """The dead letter was re-driven or dropped already; it cannot be re-driven or dropped."""


class LetterStatus(StrEnum):
    PENDING = "pending"
    REDRIVEN = "redriven"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One record of `<service>.dlq`: the failed record as it was, where it came from and why
    it failed, and whether it was handled since (PENDING when read without the store)."""

    record: Record
    status: LetterStatus = LetterStatus.PENDING

    @property
    def id(self) -> str:
        return letter_id(self.record)

    @property
    def headers(self) -> dict[str, str]:
        """The record's headers as text (invalid UTF-8 replaced), Loglane's own included."""
        return {name: value.decode(errors="replace") for name, value in self.record.headers}

    @property
    def type(self) -> str | None:
        return self._header("ce_type")

    @property
    def key(self) -> str | None:
        return None if self.record.key is None else self.record.key.decode(errors="replace")

    @property
    def request_id(self) -> str | None:
        """The request the failed record belongs to (its correlation id, else its own id)."""
        return self._header("ce_correlationid") or self._header("ce_id")

    @property
    def failed_at(self) -> str | None:
        """Where the record failed: `topic:partition:offset` of the consumed record."""
        return self._header(SOURCE_HEADER)

    @property
    def error(self) -> str:
        """The whole error the worker recorded: the reason, then the traceback if any."""
        return self._header(ERROR_HEADER) or ""

    @property
    def reason(self) -> str:
        """The error's first line: what failed, without the traceback."""
        return self.error.split("\n", 1)[0]

    @property
    def traceback(self) -> str | None:
        """The traceback of the handler's exception (the user's frames), or None."""
        _, _, rest = self.error.partition("\n")
        return rest or None

    @property
    def payload(self) -> str:
        """The failed record's value as text (invalid UTF-8 replaced)."""
        return self.record.value.decode(errors="replace")

    def as_json(self) -> dict[str, Any]:
        """The letter as JSON-ready data: what `loglane dlq show --json` prints."""
        return {
            "id": self.id,
            "status": self.status.value,
            "type": self.type,
            "key": self.key,
            "request_id": self.request_id,
            "failed_at": self.failed_at,
            "dead_lettered_at_ms": self.record.timestamp_ms,
            "reason": self.reason,
            "traceback": self.traceback,
            "headers": self.headers,
            "payload": self.payload,
        }

    def _header(self, name: str) -> str | None:
        value = self.record.header(name)
        return None if value is None else value.decode(errors="replace")


@dataclass(frozen=True, slots=True, kw_only=True)
class LetterFilter:
    """Which dead letters to take: all given conditions hold. `type`, `key` and `request` (the
    request id) are exact; `error` is a case-insensitive substring of the whole error, the
    traceback included."""

    type: str | None = None
    key: str | None = None
    error: str | None = None
    request: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.type is None or letter.type == self.type)
            and (self.key is None or letter.key == self.key)
            and (self.error is None or self.error.casefold() in letter.error.casefold())
            and (self.request is None or letter.request_id == self.request)
        )


def letter_id(record: Record) -> str:
    """The id of the dead letter at `record`'s place in the DLQ: `partition:offset`."""
    return f"{record.partition}:{record.offset}"


def dead_letters(log: Log, service: Service, store: Store | None = None) -> list[Record]:
    """The records in `service`'s DLQ; given the store, only those still pending."""
    return [letter.record for letter in list_letters(log, service, store)]


def list_letters(
    log: Log,
    service: Service,
    store: Store | None = None,
    *,
    where: LetterFilter | None = None,
    include_handled: bool = False,
) -> list[DeadLetter]:
    """The dead letters of `service` that match `where`, in DLQ order.

    Given the store, those re-driven or dropped are left out unless `include_handled`;
    without it, every letter is listed as PENDING.
    """
    handled = _Handled.read(store, service, log) if store is not None else _Handled()
    letters: list[DeadLetter] = []
    for partition, offsets in sorted(log.offsets(service.dlq_topic).items()):
        tp = TopicPartition(service.dlq_topic, partition)
        start = offsets.start if include_handled else max(offsets.start, handled.position(tp))
        while start < offsets.end and (chunk := log.read(tp, start, 1000)):
            for record in chunk:
                letter = DeadLetter(record=record, status=handled.status(record))
                if (include_handled or letter.status is LetterStatus.PENDING) and (
                    where is None or where.matches(letter)
                ):
                    letters.append(letter)
            start = chunk[-1].offset + 1
    return letters


def pending_count(log: Log, store: Store, service: Service) -> int:
    """How many dead letters of `service` are neither re-driven nor dropped: counted from the
    DLQ's offsets and the store's marks, reading only the marked letters past the re-driven
    position (to check that each mark is of the letter now there)."""
    handled = _Handled.read(store, service, log)
    pending = 0
    for partition, offsets in log.offsets(service.dlq_topic).items():
        tp = TopicPartition(service.dlq_topic, partition)
        start = max(offsets.start, handled.position(tp))
        pending += max(offsets.end - start, 0)
        for marked_partition, offset in handled.marks:
            if marked_partition == partition and start <= offset < offsets.end:
                records = log.read(tp, offset, 1)
                if (
                    records
                    and records[0].offset == offset
                    and handled.status(records[0]) is not LetterStatus.PENDING
                ):
                    pending -= 1
    return pending


def show(log: Log, service: Service, letter_id: str, store: Store | None = None) -> DeadLetter:
    """The dead letter `letter_id` (`partition:offset`) of `service`, handled or not; its
    status comes from the store when given. Raises `UnknownDeadLetterError`."""
    partition, offset = _parse_id(service, letter_id)
    tp = TopicPartition(service.dlq_topic, partition)
    offsets = log.offsets(service.dlq_topic).get(partition)
    records = log.read(tp, offset, 1) if offsets and offsets.start <= offset < offsets.end else []
    if not records or records[0].offset != offset:
        raise UnknownDeadLetterError(
            f"{service.dlq_topic} has no dead letter {letter_id} (see `loglane dlq list`)"
        )
    handled = _Handled.read(store, service, log) if store is not None else _Handled()
    return DeadLetter(record=records[0], status=handled.status(records[0]))


def drop(log: Log, store: Store, service: Service, letter_id: str) -> DeadLetter:
    """Mark the pending dead letter `letter_id` handled without re-driving it: it is no
    longer listed (unless asked for) and never re-driven. Returns it as dropped.

    Raises `UnknownDeadLetterError`, or `DeadLetterHandledError` if it was re-driven or
    dropped already.
    """
    letter = _pending(log, store, service, letter_id)
    _mark(store, service, [letter.record], LetterStatus.DROPPED)
    _release_if_head(log, store, service, letter.record)
    return DeadLetter(record=letter.record, status=LetterStatus.DROPPED)


def _release_if_head(log: Log, store: Store, service: Service, letter: Record) -> None:
    """If the dropped `letter` heads a parked key, tell the worker to release the key: the
    commands parked behind it run (`loglane.parking`)."""
    source = letter.header(SOURCE_HEADER)
    if source is None or letter.key is None:
        return
    head = source.decode()
    topic, partition, _ = head.rsplit(":", 2)
    if topic != service.input_topic:
        return  # only commands park their keys
    parked = store.parked(service.name, TopicPartition(topic, int(partition)))
    if parked.get(letter.key.decode(errors="replace")) == head:
        log.append([unpark_message(service.name, topic, letter.key, head)])


def redrive(
    log: Log,
    store: Store,
    service: Service,
    letter_id: str | None = None,
    *,
    where: LetterFilter | None = None,
) -> int:
    """Append dead letters to the input topic and record them re-driven; return how many.

    With `letter_id`, that one pending letter (else `UnknownDeadLetterError` or
    `DeadLetterHandledError`); otherwise every pending letter that matches `where`.
    """
    if letter_id is not None:
        letter = _pending(log, store, service, letter_id)
        if where is not None and not where.matches(letter):
            return 0
        log.append([_as_input(letter.record, service)])
        _mark(store, service, [letter.record], LetterStatus.REDRIVEN)
        return 1
    positions = store.positions(service.name)
    letters = list_letters(log, service, store, where=where)
    if not letters:
        return 0
    log.append([_as_input(letter.record, service) for letter in letters])
    if where is not None:
        _mark(store, service, [letter.record for letter in letters], LetterStatus.REDRIVEN)
        return len(letters)
    # Every pending letter went: each partition's position moves past its last one.
    ends: dict[TopicPartition, int] = {}
    for letter in letters:
        ends[letter.record.topic_partition] = letter.record.offset + 1
    for tp, end in ends.items():
        store.commit(
            Batch(
                service=service.name, source=tp, expected_position=positions.get(tp), position=end
            )
        )
    return len(letters)


@dataclass(slots=True)
class _Handled:
    """What the store says was handled: the re-driven prefix and the marks, per partition.

    A mark names the letter's offset and its timestamp, so that a mark left from a DLQ since
    recreated (`loglane reset` after a new log) does not apply to the letter now at that
    offset; a re-driven position beyond the DLQ's end is left from such a DLQ too.
    """

    positions: dict[TopicPartition, int] = field(default_factory=dict)
    marks: dict[tuple[int, int], tuple[LetterStatus, int | None]] = field(default_factory=dict)

    @classmethod
    def read(cls, store: Store, service: Service, log: Log) -> _Handled:
        ends = {
            TopicPartition(service.dlq_topic, partition): offsets.end
            for partition, offsets in log.offsets(service.dlq_topic).items()
        }
        positions: dict[TopicPartition, int] = {}
        marks: dict[tuple[int, int], tuple[LetterStatus, int | None]] = {}
        for tp, position in store.positions(service.name).items():
            if tp in ends and position <= ends[tp]:
                positions[tp] = position
            if tp.topic != _marks_topic(service):
                continue
            for _, ids in store.applied(service.name, tp, -1):
                for mark in ids:
                    offset, status, *stamp = mark.split(" ")
                    timestamp = int(stamp[0]) if stamp else None
                    marks[(tp.partition, int(offset))] = (LetterStatus(status), timestamp)
        return cls(positions, marks)

    def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def status(self, record: Record) -> LetterStatus:
        marked = self.marks.get((record.partition, record.offset))
        if marked is not None and marked[1] in (None, record.timestamp_ms):
            return marked[0]
        if record.offset < self.position(record.topic_partition):
            return LetterStatus.REDRIVEN
        return LetterStatus.PENDING


def _marks_topic(service: Service) -> str:
    return service.dlq_topic + _MARKS_SUFFIX


def _parse_id(service: Service, letter_id: str) -> tuple[int, int]:
    partition, _, offset = letter_id.partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        raise UnknownDeadLetterError(
            f"{letter_id!r} is not a dead letter id of {service.dlq_topic}: "
            "ids are partition:offset, as `loglane dlq list` shows them"
        )
    return int(partition), int(offset)


def _pending(log: Log, store: Store, service: Service, letter_id: str) -> DeadLetter:
    letter = show(log, service, letter_id, store)
    if letter.status is not LetterStatus.PENDING:
        raise DeadLetterHandledError(
            f"dead letter {letter_id} of {service.dlq_topic} was {letter.status} already"
        )
    return letter


def _mark(store: Store, service: Service, records: Sequence[Record], status: LetterStatus) -> None:
    """Record letters handled: one fenced batch per partition of the marks source. Another
    mark written meanwhile moves that position; then these are written after it."""
    by_partition: dict[int, list[str]] = {}
    for record in records:
        mark = f"{record.offset} {status} {record.timestamp_ms}"
        by_partition.setdefault(record.partition, []).append(mark)
    for partition, marks in sorted(by_partition.items()):
        source = TopicPartition(_marks_topic(service), partition)
        for _ in range(_MARK_ATTEMPTS):
            count = store.positions(service.name).get(source)
            batch = Batch(
                service=service.name,
                source=source,
                expected_position=count,
                position=(count or 0) + 1,
                applied_ids=marks,
            )
            try:
                store.commit(batch)
                break
            except StaleBatchError:
                continue
        else:
            raise StaleBatchError(
                f"{service.name}: could not mark {len(marks)} dead letters {status}: "
                f"{_MARK_ATTEMPTS} other marks were written meanwhile; try again"
            )


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
        elif name not in (ERROR_HEADER, REDRIVEN_HEADER):
            headers.append((name, value))
    headers.append((REDRIVEN_HEADER, place.encode()))  # lets a parked key's head through
    return Message(service.input_topic, letter.key, letter.value, tuple(headers))
