"""A service's own tables: migrations it declares, each run once per store by `prepare`.

    @tally.migration
    def create_counts(db: Migrator) -> None:
        db.execute("CREATE TABLE counts (word TEXT PRIMARY KEY, n INTEGER NOT NULL)")

A migration is known by its name, the function's: the store records the names it ran (in
`loglane_migrations`, per service) and runs each new one once, in the order the service
declares them, after the views' tables exist, all in one transaction; one that fails rolls
them all back and stops the worker with its error. Never rename or change a migration that
ran somewhere: declare a new one. Statements are written in the portable form of
`Transaction.execute` (`%s` or `%(name)s` parameters, `%%` for a literal `%`), one per
`execute`; `db.dialect` tells the stores apart for the DDL that differs between them. On
PostgreSQL they run with the service's schema first on the search path, so they name its
tables unqualified, as handlers' own statements do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


class Migrator(ABC):
    """What a migration function receives: the store's connection, inside its transaction."""

    dialect: Literal["sqlite", "postgresql"]

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        """Run one statement, written in the portable form."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One declared migration: its name, and the function that makes its changes."""

    name: str
    run: Callable[[Migrator], None]


def pending(migrations: Sequence[Migration], applied: set[str]) -> list[Migration]:
    """The migrations not applied yet, in their declared order."""
    return [migration for migration in migrations if migration.name not in applied]
