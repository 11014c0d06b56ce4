"""A set of rows as one INSERT: each column one binary array, which `unnest` turns back.

One statement whatever the number of rows, so a commit's rows travel in its pipeline (COPY
cannot run in one). A column that holds one value in every row goes once, as a scalar.
Text, jsonb (as text), bytea, integer and bigint columns, most of what a batch sends, are
encoded here into PostgreSQL's binary array format in one pass (`TextArray`, `ByteaArray`,
`IntegerArray`, `BigintArray`); psycopg's generic list dumper spends several times as long
per element. Other types go as psycopg dumps lists.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, ClassVar, cast

from psycopg.abc import AdaptContext
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.postgres import types
from psycopg.pq import Format

_HEADER = struct.Struct(">iiiii")  # dimensions, has nulls, element type, length, lower bound
_LENGTH = struct.Struct(">i")
_NULL = _LENGTH.pack(-1)


class _Array(bytes):
    """An array in PostgreSQL's binary format, of the element type its class names."""

    element_oid: ClassVar[int]
    array_oid: ClassVar[int]

    def __init_subclass__(cls, *, element: str) -> None:
        cls.element_oid, cls.array_oid = types[element].oid, types[element].array_oid


class TextArray(_Array, element="text"):
    """A text[] in PostgreSQL's binary format."""


class ByteaArray(_Array, element="bytea"):
    """A bytea[] in PostgreSQL's binary format."""


class IntegerArray(_Array, element="int4"):
    """An integer[] (int4) in PostgreSQL's binary format."""


class BigintArray(_Array, element="int8"):
    """A bigint[] (int8) in PostgreSQL's binary format."""


_FIXED = {IntegerArray: ("i", 4), BigintArray: ("q", 8)}  # struct code, size in bytes


class _ArrayDumper(Dumper):
    """Sends an `_Array` as it is, typed by its class."""

    format = Format.BINARY

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        self.oid = cast(type[_Array], cls).array_oid

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


def register(adapters: AdaptersMap) -> None:
    """Teach `adapters` (a connection's or a cursor's) to send the arrays made here."""
    for kind in (TextArray, ByteaArray, IntegerArray, BigintArray):
        adapters.register_dumper(kind, _ArrayDumper)


Kind = type[_Array]


def encode(values: Sequence[Any], kind: Kind) -> bytes:
    """`values` as a one-dimensional binary array of `kind`: str is sent as UTF-8, and an
    integer out of the type's range raises `OverflowError`."""
    header = _HEADER.pack(1, None in values, kind.element_oid, len(values), 1)
    fixed = _FIXED.get(kind)
    if fixed is not None and None not in values:  # every element its length, then its value
        code, size = fixed
        try:
            body = struct.pack(">" + ("i" + code) * len(values), *_lengths_and(values, size))
        except struct.error as exc:
            raise OverflowError(f"{kind.__name__}: {exc}") from None
        return kind(header + body)
    parts = [header]
    append, length = parts.append, _LENGTH.pack
    for value in values:
        if value is None:
            append(_NULL)
        elif fixed is not None:
            append(encode([value], kind)[_HEADER.size :])
        else:
            data = value.encode() if isinstance(value, str) else value
            append(length(len(data)))
            append(data)
    return kind(b"".join(parts))


def _lengths_and(values: Sequence[int], size: int) -> list[int]:
    """`size`, values[0], `size`, values[1], ...: what `struct.pack` lays out as elements."""
    interleaved = [size] * (2 * len(values))
    interleaved[1::2] = values
    return interleaved


# jsonb goes as text, which PostgreSQL parses as it casts
_ENCODED: dict[str, Kind] = {
    "text": TextArray,
    "jsonb": TextArray,
    "bytea": ByteaArray,
    "integer": IntegerArray,
    "bigint": BigintArray,
}


def insert(
    table: str,
    columns: Sequence[str],
    kinds: Sequence[str],
    rows: Sequence[Sequence[Any]],
    on_conflict: str = "",
) -> tuple[str, tuple[Any, ...]]:
    """The statement that inserts `rows` into `columns` of `table` (of SQL types `kinds`),
    and its parameters."""
    scalars: list[Any] = []
    arrays: list[Any] = []
    selected: list[str] = []
    unnested: list[str] = []
    for kind, column in zip(kinds, zip(*rows, strict=True), strict=True):
        first = column[0]
        if column.count(first) == len(column):  # one value in every row: sent once
            selected.append(f"%s::{kind}")
            scalars.append(first)
            continue
        selected.append(f"u.c{len(unnested)}::{kind}")
        encoded = _ENCODED.get(kind)
        if encoded is None:
            unnested.append(f"%b::{kind}[]")
            arrays.append(list(column))
        else:
            unnested.append("%b")
            arrays.append(encode(column, encoded))
    if unnested:
        names = ", ".join(f"c{i}" for i in range(len(unnested)))
        source = f" FROM unnest({', '.join(unnested)}) AS u({names})"
    else:  # every row the same: as many of it
        source = " FROM generate_series(1, %s)"
        arrays.append(len(rows))
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(selected)}{source} "
        f"{on_conflict}"
    )
    return sql, (*scalars, *arrays)
