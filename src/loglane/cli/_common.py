"""What every command shares: the Typer app, the consoles, the options and the error line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from loglane.errors import LoglaneError

app = typer.Typer(
    help="Loglane: event-driven microservices on a log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

App = Annotated[str, typer.Argument(help="The landscape: module, module:attribute or file.py")]
LogURL = Annotated[str, typer.Option("--log", envvar="LOGLANE_LOG", help="Log backend URL")]
DbURL = Annotated[str, typer.Option("--db", envvar="LOGLANE_DB", help="Store backend URL")]
LogFormat = Annotated[str, typer.Option("--log-format", help="text or json")]
Host = Annotated[str, typer.Option(help="Address the HTTP API listens on")]
Port = Annotated[int, typer.Option(help="Port the HTTP API listens on")]
Tokens = Annotated[
    list[str] | None,
    typer.Option(
        "--api-token",
        help="A bearer token the API accepts; repeat for several. Default: the "
        "comma-separated LOGLANE_API_TOKENS; none means no auth",
    ),
]


@contextmanager
def clear_errors() -> Iterator[None]:
    """Turn Loglane's errors into one red line and exit status 2, never a traceback."""
    try:
        yield
    except LoglaneError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def dash(value: int | None) -> str:
    """A position or count, or "-" when there is none."""
    return "-" if value is None else str(value)
