"""App services: the input topic, the handlers, the views and the output topic of one service."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from loglane.errors import ConfigurationError, PermanentError, UnreadableRowError
from loglane.events import Event, Upcasters
from loglane.migrations import Migration, Migrator
from loglane.views import View

if TYPE_CHECKING:
    from loglane.transaction import Transaction

E = TypeVar("E", bound=Event)
Row = TypeVar("Row", bound=BaseModel)
HandlerFunc = Callable[[E, "Transaction"], Awaitable[None] | None]

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Handler:
    """One `@service.handles` registration: which event, from which topic, run by what."""

    event_type: type[Event]
    func: Callable[[Any, Transaction], Any]
    topic: str
    key_field: str | None
    is_async: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """How often a failing handler is retried, with exponential backoff, before the DLQ.

    Only failures that may pass are retried: a `PermanentError`, an `UnreadableRowError` (a
    view row no upcaster turns into the current model), or an exception of a type in
    `give_up_on`, sends the event to the DLQ at once (as an event that fails validation
    goes there without reaching its handler)."""

    attempts: int = 3
    backoff_seconds: float = 0.05
    max_backoff_seconds: float = 1.0
    give_up_on: tuple[type[BaseException], ...] = ()

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether to run the handler again after `error` in attempt `attempt` (from 0)."""
        permanent = isinstance(error, (PermanentError, UnreadableRowError, *self.give_up_on))
        return not permanent and attempt + 1 < self.attempts

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff_seconds * 2**attempt, self.max_backoff_seconds))


class Service:
    """An app service: consumes `<name>.in` (and other services' `.out`), emits `<name>.out`."""

    def __init__(
        self,
        name: str,
        *,
        partitions: int = 4,
        retry: Retry | None = None,
        park_keys: bool = True,
    ) -> None:
        """`park_keys`: after a command of a key is dead-lettered, later commands of that key
        wait behind it until it is re-driven or dropped, so per-key order holds (see
        `loglane.parking`); False passes the dead letter over and goes on."""
        if not _SERVICE_NAME.match(name):
            raise ConfigurationError(
                f"service name {name!r} must start with a lowercase letter and hold only "
                "lowercase letters, digits, '-' and '_'"
            )
        if partitions < 1:
            raise ConfigurationError(f"service {name!r}: partitions must be at least 1")
        self.name = name
        self.partitions = partitions
        self.retry = retry or Retry()
        self.park_keys = park_keys
        self.views: dict[str, View[Any]] = {}
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._migrations: list[Migration] = []

    @property
    def input_topic(self) -> str:
        return f"{self.name}.in"

    @property
    def output_topic(self) -> str:
        return f"{self.name}.out"

    @property
    def dlq_topic(self) -> str:
        return f"{self.name}.dlq"

    @property
    def topics(self) -> list[str]:
        """The topics this service's workers consume, its own input first."""
        others = sorted({topic for topic, _ in self._handlers} - {self.input_topic})
        return [self.input_topic, *others]

    @property
    def sources(self) -> list[str]:
        """The services whose output this service consumes."""
        return [topic.removesuffix(".out") for topic in self.topics[1:]]

    @property
    def handlers(self) -> list[Handler]:
        return list(self._handlers.values())

    @property
    def commands(self) -> dict[str, type[Event]]:
        """The event types accepted on this service's own input topic, by type name."""
        return {
            handler.event_type.event_type: handler.event_type
            for handler in self._handlers.values()
            if handler.topic == self.input_topic
        }

    def view(
        self,
        name: str,
        model: type[Row],
        *,
        key: str,
        indexes: list[str] | tuple[str, ...] = (),
        version: int = 1,
        upcasters: Upcasters | None = None,
    ) -> View[Row]:
        """Declare a view of `model` rows keyed by the field `key`, filterable by `indexes`.

        Raise `version` when `model` changes in a way its stored rows no longer validate
        as, and give `upcasters[v]` for each older version v still stored: a function from a
        row's document (a dict) at version v to the document at version v + 1, as events'
        `event_upcasters` do for their data. Rows are upcast as they are read, and written
        back at `version` when a handler puts them.
        """
        if name in self.views:
            raise ConfigurationError(f"service {self.name!r} already has a view named {name!r}")
        view = View(
            service=self.name,
            name=name,
            model=model,
            key=key,
            indexes=tuple(indexes),
            version=version,
            upcasters=upcasters or {},
        )
        self.views[name] = view
        return view

    @property
    def migrations(self) -> tuple[Migration, ...]:
        """The migrations of the service's own tables, in the order declared."""
        return tuple(self._migrations)

    def migration(self, func: Callable[[Migrator], None]) -> Callable[[Migrator], None]:
        """Declare `func` a migration of tables the service's handlers write with their own
        SQL (`tx.execute`): the store runs it once, when it is first prepared with it,
        known by the function's name (see `loglane.migrations`)."""
        name = func.__name__
        if any(migration.name == name for migration in self._migrations):
            raise ConfigurationError(
                f"service {self.name!r} already has a migration named {name!r}; a "
                "migration is known by its name, so give each its own"
            )
        self._migrations.append(Migration(name, func))
        return func

    def handles(
        self,
        event_type: type[E],
        *,
        key: str | None = None,
        source: str | Service | None = None,
    ) -> Callable[[HandlerFunc[E]], HandlerFunc[E]]:
        """Register a handler for `event_type`.

        Without `source` the event is a command on this service's input topic, and `key`
        names the field whose value partitions it (events of one key are handled in order).
        With `source=payments` (the `Service`, or its name) the handler consumes
        `payments.out`, keyed as its emitter chose; the landscape checks that it has it.
        """
        if isinstance(source, Service):
            source = source.name
        if source is not None and key is not None:
            raise ConfigurationError(
                f"{event_type.__name__}: key= applies to commands on {self.input_topic}; events "
                f"from {source!r} keep the key their emitter gave them"
            )
        if key is not None and key not in event_type.model_fields:
            raise ConfigurationError(
                f"{event_type.__name__} has no field {key!r} to use as its partition key"
            )
        topic = self.input_topic if source is None else f"{source}.out"

        def register(func: HandlerFunc[E]) -> HandlerFunc[E]:
            slot = (topic, event_type.event_type)
            if slot in self._handlers:
                raise ConfigurationError(
                    f"service {self.name!r} already handles {event_type.event_type} from {topic}"
                )
            self._handlers[slot] = Handler(
                event_type=event_type,
                func=func,
                topic=topic,
                key_field=key,
                is_async=inspect.iscoroutinefunction(func),
            )
            return func

        return register

    def handler_for(self, topic: str, event_type: str) -> Handler | None:
        return self._handlers.get((topic, event_type))

    def partition_key(self, command: Event) -> bytes | None:
        """The message key a command is posted with: its key field's value, UTF-8."""
        handler = self._handlers.get((self.input_topic, command.event_type))
        if handler is None:
            raise ConfigurationError(
                f"service {self.name!r} has no handler for {command.event_type}; "
                f"it accepts {', '.join(sorted(self.commands)) or 'no commands'}"
            )
        if handler.key_field is None:
            return None
        return str(getattr(command, handler.key_field)).encode()

    def __repr__(self) -> str:
        return f"Service({self.name!r})"
