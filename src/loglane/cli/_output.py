"""How commands print: JSON for scripts, tables for people that fit the terminal and never
cut an id."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.table import Table

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts, not a table")]


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout, unwrapped and uncoloured whatever the terminal."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def add_id_column(table: Table, header: str, values: Sequence[str]) -> None:
    """A column of ids: as wide as its longest value, never wrapped or shortened, so the
    text columns beside it wrap instead."""
    width = max((len(value) for value in (header, *values)), default=len(header))
    table.add_column(header, no_wrap=True, min_width=width, overflow="fold")


def add_text_column(table: Table, header: str, *, justify: Any = "left") -> None:
    """A column that wraps (folding words longer than the column) to fit the terminal."""
    table.add_column(header, overflow="fold", justify=justify)
