"""Views: typed, queryable tables that a service's workers materialize from its events."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pydantic_core import to_json

from loglane.errors import ConfigurationError

Row = TypeVar("Row", bound=BaseModel)
Key = str | int

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Column:
    """An indexed field of a view, stored as a real column next to the JSON document."""

    name: str
    kind: type  # one of str, int, float, bool


@dataclass(frozen=True, slots=True)
class RowImage:
    """A row as it is written: its JSON document and its indexed fields' values, taken when
    the handler put it, so later changes to the model object cannot leak into the write."""

    document: bytes
    columns: tuple[Any, ...]


@dataclass(frozen=True, eq=False)
class View(Generic[Row]):
    """A table of `model` rows keyed by the `key` field, declared by `Service.view`."""

    service: str
    name: str
    model: type[Row]
    key: str
    indexes: tuple[str, ...] = ()
    columns: tuple[Column, ...] = field(init=False)
    key_kind: type = field(init=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"view name {self.name!r} must be lowercase letters, digits and underscores"
            )
        fields = self.model.model_fields
        for name in (self.key, *self.indexes):
            if name not in fields:
                raise ConfigurationError(
                    f"view {self.name!r}: {self.model.__name__} has no field {name!r}; "
                    f"choose from {', '.join(fields)}"
                )
        object.__setattr__(self, "key_kind", _kind_of(self.model, self.key))
        if self.key_kind not in (str, int):
            raise ConfigurationError(
                f"view {self.name!r}: key field {self.key!r} must be str or int"
            )
        object.__setattr__(
            self,
            "columns",
            tuple(Column(name, _kind_of(self.model, name)) for name in self.indexes),
        )

    def key_of(self, row: Row) -> Key:
        key: Key = getattr(row, self.key)
        return key

    def column_values(self, row: Row) -> tuple[Any, ...]:
        return tuple(getattr(row, column.name) for column in self.columns)

    def image(self, row: Row) -> RowImage:
        if not self.columns:
            return RowImage(to_json(row), ())
        return RowImage(to_json(row), self.column_values(row))

    def check_filters(self, where: Mapping[str, Any]) -> None:
        """Refuse filters on fields that have no index: they would scan the whole table."""
        unknown = set(where) - {self.key, *self.indexes}
        if unknown:
            raise ConfigurationError(
                f"view {self.name!r} cannot filter on {', '.join(sorted(unknown))}; "
                f"indexed fields: {', '.join((self.key, *self.indexes))}"
            )

    def load(self, document: bytes | str) -> Row:
        return self.model.model_validate_json(document)

    def __repr__(self) -> str:
        return f"View({self.service}.{self.name})"


def _kind_of(model: type[BaseModel], name: str) -> type:
    kinds: dict[object, type] = {bool: bool, int: int, float: float}
    return kinds.get(model.model_fields[name].annotation, str)
