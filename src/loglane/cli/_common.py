"""What every command shares: the Typer app, the consoles, the options and the error line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from loglane.errors import LoglaneError
from loglane.settings import help_text

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

# The options of `run`, `worker`, `api` and `config`, one per field of Settings. Each defaults
# to None, "not given", so that Settings.resolve takes the LOGLANE_… variable instead.
SettingApp = Annotated[
    str | None,
    typer.Argument(
        metavar="APP",
        help=help_text("app"),
        show_default=False,
    ),
]
SettingLog = Annotated[str | None, typer.Option("--log", help=help_text("log"))]
SettingDb = Annotated[str | None, typer.Option("--db", help=help_text("db"))]
LogFormat = Annotated[str | None, typer.Option("--log-format", help=help_text("log_format"))]
LogLevel = Annotated[str | None, typer.Option("--log-level", help=help_text("log_level"))]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help=help_text("batch_size"))]
ProbePort = Annotated[int | None, typer.Option("--probe-port", help=help_text("probe_port"))]
Workers = Annotated[int | None, typer.Option("--workers", help=help_text("workers"))]
ServeApi = Annotated[bool | None, typer.Option("--api/--no-api", help=help_text("api"))]
Host = Annotated[str | None, typer.Option("--host", help=help_text("host"))]
Port = Annotated[int | None, typer.Option("--port", help=help_text("port"))]
Services = Annotated[
    list[str] | None,
    typer.Option("--service", help=help_text("service", more="; repeat for several")),
]
WorkerService = Annotated[
    str | None,
    typer.Option("--service", help="The service whose worker this is (env LOGLANE_SERVICE)"),
]
Tokens = Annotated[
    list[str] | None,
    typer.Option("--api-token", help=help_text("api_tokens", more="; repeat for several")),
]


@contextmanager
def clear_errors() -> Iterator[None]:
    """Turn Loglane's errors into one red line and exit status 2, never a traceback."""
    try:
        yield
    except LoglaneError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def dash(value: int | None) -> str:
    """A position or count, or "-" when there is none."""
    return "-" if value is None else str(value)
