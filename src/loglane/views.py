"""Views: typed, queryable tables that a service's workers materialize from its events."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json, to_json

from loglane.errors import ConfigurationError, UnreadableRowError
from loglane.events import Upcasters

Row = TypeVar("Row", bound=BaseModel)
Key = str | int

RESERVED_COLUMNS = ("doc", "doc_version")
"""The columns of every view table besides its key and indexed fields."""

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


@dataclass(frozen=True, slots=True)
class OutdatedDocument:
    """A stored row's document written at another `version` of its view than the current
    one: its view upcasts it when it is loaded. Rows at the current version travel as their
    plain document, so reading them costs nothing more."""

    document: str | bytes
    version: int


Document = str | bytes | OutdatedDocument
"""A row as a store read it, for `View.load`."""


@dataclass(frozen=True, eq=False)
class View(Generic[Row]):
    """A table of `model` rows keyed by the `key` field, declared by `Service.view`.

    Each stored row keeps the `version` of the model it was written with. A row of an
    older version is passed through `upcasters[v]` (version v to v + 1), one after the
    other, before it is validated as `model`; a row that still does not validate, or has no
    upcaster for its version, raises `UnreadableRowError`.
    """

    service: str
    name: str
    model: type[Row]
    key: str
    indexes: tuple[str, ...] = ()
    version: int = 1
    upcasters: Upcasters = field(default_factory=dict)
    columns: tuple[Column, ...] = field(init=False)
    key_kind: type = field(init=False)
    _column_at: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"view name {self.name!r} must be lowercase letters, digits and underscores"
            )
        self._check_versions()
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
        object.__setattr__(self, "_column_at", {name: i for i, name in enumerate(self.indexes)})

    def key_of(self, row: Row) -> Key:
        key: Key = getattr(row, self.key)
        return key

    def column_values(self, row: Row) -> tuple[Any, ...]:
        return tuple(getattr(row, column.name) for column in self.columns)

    def image(self, row: Row) -> RowImage:
        if not self.columns:
            return RowImage(to_json(row), ())
        return RowImage(to_json(row), self.column_values(row))

    def matches(self, key: Key, image: RowImage, where: Mapping[str, Any]) -> bool:
        """Whether the row written as `image` at `key` has the values `where` names, as
        the model holds them (filters checked by `check_filters`)."""
        for name, value in where.items():
            held = key if name == self.key else image.columns[self._column_at[name]]
            if held != value:
                return False
        return True

    def check_filters(self, where: Mapping[str, Any]) -> None:
        """Refuse filters on fields that have no index: they would scan the whole table."""
        unknown = set(where) - {self.key, *self.indexes}
        if unknown:
            raise ConfigurationError(
                f"view {self.name!r} cannot filter on {', '.join(sorted(unknown))}; "
                f"indexed fields: {', '.join((self.key, *self.indexes))}"
            )

    def stored(self, document: str | bytes, version: int) -> Document:
        """What a store hands on for a row it read with its stored `version`."""
        return document if version == self.version else OutdatedDocument(document, version)

    def load(self, document: Document, key: Key | None = None) -> Row:
        """The row `document` holds, as the current model (upcast first if it is older);
        `UnreadableRowError` if it does not validate. `key` is only for the message."""
        if document.__class__ is OutdatedDocument:
            return self._upcast(document, key)
        try:
            return self.model.model_validate_json(document)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise self._unreadable(key, self.version, _summary(exc)) from None

    def _upcast(self, outdated: OutdatedDocument, key: Key | None) -> Row:
        version = outdated.version
        if version > self.version:
            raise self._unreadable(
                key,
                version,
                f"it was written by newer code (version {version}, this code's is {self.version})",
            )
        try:
            data = from_json(outdated.document)
        except ValueError as exc:
            raise self._unreadable(key, version, f"its document is not JSON: {exc}") from None
        for step in range(version, self.version):
            upcaster = self.upcasters.get(step)
            if upcaster is None:
                raise self._unreadable(key, version, f"there is no upcaster from version {step}")
            try:
                data = upcaster(data)
            except Exception as exc:
                raise self._unreadable(
                    key, version, f"the upcaster from version {step} failed: {exc!r}"
                ) from exc
        try:
            return self.model.model_validate_json(to_json(data))
        except ValidationError as exc:
            raise self._unreadable(key, version, _summary(exc)) from None

    def _unreadable(self, key: Key | None, version: int, reason: str) -> UnreadableRowError:
        row = "a row" if key is None else f"the row {key!r}"
        return UnreadableRowError(
            f"view {self.service}/{self.name}: {row}, stored at version {version}, cannot be "
            f"read as {self.model.__name__} version {self.version}: {reason}; declare the view "
            "with a new version= and upcasters= for its old rows, or rebuild it from the log: "
            f"loglane rebuild APP --service {self.service} --view {self.name}"
        )

    def _check_versions(self) -> None:
        if self.version < 1:
            raise ConfigurationError(f"view {self.name!r}: version must be at least 1")
        steps = sorted(self.upcasters)
        if any(not 1 <= step < self.version for step in steps):
            raise ConfigurationError(
                f"view {self.name!r}: upcasters are keyed by the version they upcast from, "
                f"1 to {self.version - 1} for version {self.version}; got {steps}"
            )
        if steps and steps != list(range(steps[0], self.version)):
            missing = sorted(set(range(steps[0], self.version)) - set(steps))
            raise ConfigurationError(
                f"view {self.name!r}: no upcaster from version {missing[0]}; rows of "
                f"version {steps[0]} could not reach version {self.version}"
            )
        object.__setattr__(self, "upcasters", dict(self.upcasters))

    def __repr__(self) -> str:
        return f"View({self.service}.{self.name})"


def _summary(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or 'the row'}: {error['msg']}"
        for error in exc.errors(include_url=False)[:3]
    ]
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def _kind_of(model: type[BaseModel], name: str) -> type:
    kinds: dict[object, type] = {bool: bool, int: int, float: float}
    return kinds.get(model.model_fields[name].annotation, str)
