"""The `tx` a handler receives: view reads and writes, emitted events, a rejection.

A batch of one input partition shares a `UnitOfWork`: reads see the batch's earlier writes,
and everything is flushed in one store transaction when the batch commits. Each event's
changes stay in its own `Transaction` until its handler returns, so a handler that raises
(and is retried, or dead-lettered) leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic

from pydantic_core import to_json

from loglane.envelope import Envelope, output_event_id
from loglane.events import Event, Rejected
from loglane.records import Message
from loglane.stores.base import Row, Statement, Store
from loglane.views import Key, View

_ABSENT: Any = object()


class UnitOfWork:
    """The view changes of one batch, layered over the store's committed rows."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.writes: dict[View[Any], dict[Key, Any]] = {}
        self.statements: list[Statement] = []

    def read(self, view: View[Row], key: Key) -> Row | None:
        rows = self.writes.get(view)
        if rows is not None:
            row = rows.get(key, _ABSENT)
            if row is not _ABSENT:
                return row  # type: ignore[no-any-return]
        return self._store.get(view, key)

    def absorb(self, tx: Transaction) -> None:
        for view, rows in tx.writes.items():
            self.writes.setdefault(view, {}).update(rows)
        self.statements.extend(tx.statements)


class ViewAccess(Generic[Row]):
    """`tx[view]`: get, put and delete rows of one view inside a handler."""

    __slots__ = ("_rows", "_tx", "_view")

    def __init__(self, tx: Transaction, view: View[Row]) -> None:
        self._tx = tx
        self._view = view
        self._rows = tx.writes.setdefault(view, {})

    def get(self, key: Key) -> Row | None:
        row = self._rows.get(key, _ABSENT)
        if row is _ABSENT:
            return self._tx.unit.read(self._view, key)
        return row  # type: ignore[no-any-return]

    def put(self, row: Row) -> None:
        if not isinstance(row, self._view.model):
            raise TypeError(
                f"view {self._view.name!r} holds {self._view.model.__name__} rows, "
                f"not {type(row).__name__}"
            )
        self._rows[self._view.key_of(row)] = row

    def delete(self, key: Key) -> None:
        self._rows[key] = None


class Transaction:
    """What a handler may do while it handles one event."""

    def __init__(
        self,
        *,
        unit: UnitOfWork,
        service: str,
        output_topic: str,
        cause: Envelope,
        key: bytes | None,
        time: str,
    ) -> None:
        self.unit = unit
        self.writes: dict[View[Any], dict[Key, Any]] = {}
        self.messages: list[Message] = []
        self.statements: list[Statement] = []
        self.event_ids: list[str] = []
        self.rejection: str | None = None
        self._service = service
        self._output_topic = output_topic
        self._cause = cause
        self._key = key
        self._time = time

    @property
    def event_id(self) -> str:
        """The id of the event being handled."""
        return self._cause.id

    @property
    def request_id(self) -> str:
        """The id of the request this event belongs to (its correlation id)."""
        return self._cause.correlation_id or self._cause.id

    def __getitem__(self, view: View[Row]) -> ViewAccess[Row]:
        if self.rejection is not None:
            raise RuntimeError("the command was rejected; return from the handler after reject()")
        return ViewAccess(self, view)

    def emit(self, event: Event, *, key: str | None = None) -> None:
        """Publish `event` on the service's output topic once the batch commits.

        It is keyed like the event being handled unless `key` is given.
        """
        if self.rejection is not None:
            raise RuntimeError("the command was rejected; return from the handler after reject()")
        self._append(event, key)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        """Run `sql` in the batch's store transaction, for what the view API cannot express.

        The statement runs at commit, after the batch's view writes, together with the input
        position: once in effect, like every view change. It is written in the store's dialect
        and parameter style (SQLite `?`, PostgreSQL `%s`); `tx[view].get` does not see its
        effects, and a rejection drops it.
        """
        if self.rejection is not None:
            raise RuntimeError("the command was rejected; return from the handler after reject()")
        self.statements.append(Statement(sql, params))

    def _append(self, event: Event, key: str | None) -> None:
        envelope = Envelope(
            id=output_event_id(self._service, self._cause.id, len(self.event_ids)),
            type=event.event_type,
            source=self._service,
            time=self._time,
            data=to_json(event),
            correlation_id=self.request_id,
            causation_id=self._cause.id,
            traceparent=self._cause.traceparent,
        )
        message_key = self._key if key is None else key.encode()
        self.messages.append(
            Message(self._output_topic, message_key, envelope.data, envelope.headers())
        )
        self.event_ids.append(envelope.id)

    def reject(self, reason: str) -> None:
        """Refuse the command: its view changes and events are dropped, and a `Rejected`
        event correlated with the request is emitted instead."""
        self.writes.clear()
        self.statements.clear()
        self.messages.clear()
        self.event_ids.clear()
        self._append(Rejected(reason=reason), None)
        self.rejection = reason
