"""The `tx` a handler receives: view reads and writes, emitted events, a rejection.

A batch of one input partition shares a `UnitOfWork`: reads see the batch's earlier writes
and, below them, the rows the batch's store transaction reads (under its locks); everything
is written in that transaction when the batch commits. Each event's changes stay in its own
`Transaction` until its handler returns, so a handler that raises (and is retried, or
dead-lettered) leaves nothing behind.

Coroutine handlers of different partitions run side by side, one partition's one at a time:
a handler awaiting something lets another partition's run. Their transactions keep what they
read from the unit (`Transaction.seen`), and one whose reads another handler changed in the
meantime is not absorbed: the worker runs it again, on the rows as they are now
(`UnitOfWork.unchanged`). The batch's effect is then that of its handlers run one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn

from opentelemetry.trace import Tracer
from pydantic_core import to_json

from loglane import tracing
from loglane.envelope import Envelope, dataschema, emitted_headers, output_event_id
from loglane.events import Event, Rejected
from loglane.records import Message
from loglane.stores.base import Row, Statement, StoreTransaction
from loglane.views import Document, Key, RowImage, View

_ABSENT: Any = object()


class UnitOfWork:
    """The view changes of one batch, layered over the rows its store transaction reads.

    Rows are kept as documents: every `get` builds a fresh model, so a handler that changes
    a row in place and then fails leaves nothing behind for its retry or the next event.
    """

    def __init__(self, store: StoreTransaction) -> None:
        self._store = store
        self._committed: dict[View[Any], dict[Key, Document | None]] = {}
        self.writes: dict[View[Any], dict[Key, RowImage | None]] = {}
        self.statements: list[Statement] = []
        self._changes: dict[View[Any], int] = {}  # handlers absorbed that wrote each view

    def document(self, view: View[Any], key: Key) -> Document | None:
        """The row's document as the batch sees it: its own writes, else the store's."""
        written = self.writes.get(view)
        if written is not None and key in written:
            image = written[key]
            return None if image is None else image.document
        committed = self._committed.setdefault(view, {})
        if key not in committed:
            committed[key] = self._store.get(view, key)
        return committed[key]

    def prefetch(self, view: View[Any], keys: list[Key]) -> None:
        """Read the rows of `keys` the batch has not seen yet, in one round trip."""
        committed = self._committed.setdefault(view, {})
        written = self.writes.get(view, {})
        missing = list({key: None for key in keys if key not in committed and key not in written})
        if missing:
            found = self._store.get_many(view, missing)
            for key in missing:
                committed[key] = found.get(key)

    def find(
        self,
        view: View[Any],
        where: Mapping[str, Any],
        limit: int,
        own: Mapping[Key, RowImage | None],
    ) -> list[tuple[Key, Document]]:
        """Up to `limit` rows matching `where` as the batch sees them, in key order: the
        store's committed rows, under the batch's writes and then `own` (the handler's)."""
        pending = {**self.writes.get(view, {}), **own}
        # every pending key may hide one committed row: read that many more
        found = self._store.find(view, where, limit + len(pending))
        committed = self._committed.setdefault(view, {})
        rows: dict[Key, Document] = {}
        for key, document in found:
            if key in pending:
                continue
            seen = committed.setdefault(key, document)  # as an earlier `get` saw it
            if seen is not None:
                rows[key] = seen
        for key, image in pending.items():
            if image is not None and view.matches(key, image, where):
                rows[key] = image.document
        return sorted(rows.items(), key=_by_key)[:limit]

    def changes(self, view: View[Any]) -> int:
        """How many handlers absorbed so far wrote rows of `view`."""
        return self._changes.get(view, 0)

    def unchanged(self, tx: Transaction) -> bool:
        """Whether every row `tx` read from the batch, and every view it searched, is still as
        it was read: false if a handler running beside it absorbed a change to one."""
        seen = tx.seen
        if seen is None:
            return True
        rows = all(self.document(view, key) is doc for (view, key), doc in seen.rows.items())
        return rows and all(self.changes(view) == n for view, n in seen.views.items())

    def absorb(self, tx: Transaction) -> None:
        for view, rows in tx.writes.items():
            if rows:
                self.writes.setdefault(view, {}).update(rows)
                self._changes[view] = self._changes.get(view, 0) + 1
        self.statements.extend(tx.statements)


def _by_key(row: tuple[Key, Document]) -> Key:
    return row[0]


@dataclass(slots=True)
class Seen:
    """What a handler run beside others read from its batch's unit of work: each row as it
    first read it, and each view it searched, with the unit's count of its changes then."""

    rows: dict[tuple[View[Any], Key], Document | None] = field(default_factory=dict)
    views: dict[View[Any], int] = field(default_factory=dict)


class ViewAccess(Generic[Row]):
    """`tx[view]`: get, put and delete rows of one view inside a handler."""

    __slots__ = ("_rows", "_tx", "_view")

    def __init__(self, tx: Transaction, view: View[Row]) -> None:
        self._tx = tx
        self._view = view
        self._rows = tx.writes.setdefault(view, {})

    def get(self, key: Key) -> Row | None:
        """A copy of the row at `key` as this batch sees it, or None."""
        if key == self._tx.read_key:
            self._tx.keyed_reads.add(self._view)
        image = self._rows.get(key, _ABSENT)
        if image is _ABSENT:
            document = self._tx.unit.document(self._view, key)
            if self._tx.seen is not None:  # run beside other handlers: checked as it ends
                self._tx.seen.rows.setdefault((self._view, key), document)
        else:
            document = None if image is None else image.document
        return None if document is None else self._view.load(document, key)

    def put(self, row: Row) -> None:
        """Write `row` as it is now; changing the object afterwards changes nothing."""
        if not isinstance(row, self._view.model):
            raise TypeError(
                f"view {self._view.name!r} holds {self._view.model.__name__} rows, "
                f"not {type(row).__name__}"
            )
        self._rows[self._view.key_of(row)] = self._view.image(row)

    def delete(self, key: Key) -> None:
        self._rows[key] = None

    def find(self, *, limit: int = 100, **where: Any) -> list[Row]:
        """Copies of up to `limit` rows whose indexed fields (or key) equal `where`, in key
        order, as this batch sees them: rows put earlier in the batch are found by their
        new values, rows deleted are not. Only indexed fields can be filtered on, and a
        row that comes to match in another batch meanwhile is not seen; the rows found are
        held as `get` holds the rows it reads."""
        view = self._view
        view.check_filters(where)
        if limit < 1:
            raise ValueError(f"find: limit must be at least 1, not {limit}")
        if self._tx.seen is not None:
            self._tx.seen.views.setdefault(view, self._tx.unit.changes(view))
        found = self._tx.unit.find(view, where, limit, self._rows)
        return [view.load(document, key) for key, document in found]


@dataclass(frozen=True, slots=True)
class Emitter:
    """What every event emitted in one batch shares: the service and its output topic, and,
    already encoded for the headers, the service as `ce_source` and the batch's time."""

    service: str
    topic: str
    source: bytes
    time: bytes
    tracer: Tracer | None = None  # None: no OpenTelemetry SDK, no spans

    @classmethod
    def of(cls, service: str, output_topic: str, time: str) -> Emitter:
        return cls(service, output_topic, service.encode(), time.encode(), tracing.tracer())


class Transaction:
    """What a handler may do while it handles one event."""

    def __init__(
        self,
        *,
        unit: UnitOfWork,
        emitter: Emitter,
        cause: Envelope,
        key: bytes | None,
        origin: str,
        read_key: Key | None = None,
        beside_others: bool = False,
    ) -> None:
        """`key` is the message key of emitted events unless `emit` is given one; `origin`
        (`topic/partition/offset`) is where the event being handled sits in the log;
        `read_key` is the event's own key, at which the worker learns what to prefetch.
        A handler run `beside_others` (other partitions' handlers) keeps what it reads."""
        self.unit = unit
        self.writes: dict[View[Any], dict[Key, RowImage | None]] = {}
        self.messages: list[Message] = []
        self.statements: list[Statement] = []
        self.event_ids: list[str] = []
        self.rejection: str | None = None
        self._service = emitter.service
        self._emitter = emitter
        self._cause = cause
        self._key = key
        self._origin = origin
        self.read_key = read_key
        self.keyed_reads: set[View[Any]] = set()
        self.seen = Seen() if beside_others else None

    @property
    def event_id(self) -> str:
        """The id of the event being handled."""
        return self._cause.id

    @property
    def request_id(self) -> str:
        """The id of the request this event belongs to (its correlation id)."""
        return self._cause.request_id

    def __getitem__(self, view: View[Row]) -> ViewAccess[Row]:
        if self.rejection is not None:
            raise RuntimeError("the command was rejected; return from the handler after reject()")
        return ViewAccess(self, view)

    def emit(self, event: Event, *, key: str | None = None) -> None:
        """Publish `event` on the service's output topic once the batch commits.

        It is keyed by the handler's declared key (for a command, the value of its `key=`
        field; for another service's event, the key its emitter gave it) unless `key` is given;
        an event that would have no key is keyed by its own id, so every copy of it lands in
        the same partition.
        """
        if self.rejection is not None:
            raise RuntimeError("the command was rejected; return from the handler after reject()")
        self._append(event, key)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        """Run `sql` in the batch's store transaction, for what the view API cannot express.

        The statement runs at commit, after the batch's view writes, together with the input
        position: once in effect, like every view change; `tx[view].get` does not see its
        effects, and a rejection drops it. Its parameters are written the same on every
        store: `%s` with a sequence of values, `%(name)s` with a mapping, and `%%` for a
        literal `%` (psycopg's style; SQLite's own `?` and `:name` work on SQLite too, in a
        statement without `%` marks). The SQL itself is in the store's dialect; create the
        tables it writes with a migration (`Service.migration`).
        """
        if self.rejection is not None:
            raise RuntimeError("the command was rejected; return from the handler after reject()")
        self.statements.append(Statement(sql, params))

    def _append(self, event: Event, key: str | None) -> None:
        index = len(self.event_ids)
        cause = self._cause
        event_id = output_event_id(self._service, cause.id, index, cause_source=cause.source)
        emitter = self._emitter
        traced = None
        if emitter.tracer is not None:
            traced = tracing.publishing(emitter.tracer, emitter.topic, event.event_type, event_id)
        headers = emitted_headers(
            id=event_id,
            type=event.event_type,
            source=emitter.source,
            time=emitter.time,
            cause=cause,
            origin=f"{self._origin}/{index}",
            traceparent=traced,
            dataschema=dataschema(event.event_type, event.event_version),
        )
        message_key = self._key if key is None else key.encode()
        if message_key is None:
            # A keyless event would go to any partition, and a copy re-published after a
            # crash to another one than its original, out of reach of consumers' dedupe.
            message_key = event_id.encode()
        self.messages.append(Message(self._emitter.topic, message_key, to_json(event), headers))
        self.event_ids.append(event_id)

    def reject(self, reason: str) -> NoReturn:
        """Refuse the command and end the handler: its view changes and events are dropped,
        and a `Rejected` event correlated with the request is emitted instead."""
        self.writes.clear()
        self.statements.clear()
        self.messages.clear()
        self.event_ids.clear()
        self._append(Rejected(reason=reason), None)
        self.rejection = reason
        raise CommandRejected(reason)


class CommandRejected(Exception):
    """Raised by `tx.reject` to end the handler; the worker records the rejection, which is
    kept on `tx`: a handler that catches it by accident and returns still has its command
    rejected (one that goes on using `tx` fails, as after any rejection)."""
