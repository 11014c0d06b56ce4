"""`reset`: move a service's stored positions to the log's start or end."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from loglane.cli._common import App, DbURL, LogURL, app, clear_errors, console, dash
from loglane.errors import LoglaneError
from loglane.landscape import load_landscape
from loglane.reset import PositionReset, ResetTarget, plan_reset, reset_positions
from loglane.service import Service
from loglane.urls import DEFAULT_DB_URL, DEFAULT_LOG_URL, open_log, open_store


@app.command()
def reset(
    app_path: App,
    service: Annotated[str, typer.Option(help="The service whose positions to reset")],
    to: Annotated[
        ResetTarget,
        typer.Option(help="The log's start (read every record it holds) or its end (only new)"),
    ] = ResetTarget.START,
    yes: Annotated[bool, typer.Option("--yes", help="Reset without asking")] = False,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
) -> None:
    """Move a service's stored input positions to the log's start (or end), as after the log
    was recreated or truncated. Stop the service's workers first."""
    with clear_errors():
        chosen = load_landscape(app_path).service(service)
        event_log = open_log(log)
        store = open_store(db, chosen.name)
        try:
            plan = plan_reset(event_log, store, chosen, to)
            _print_reset_plan(chosen, plan)
            if not yes:
                _confirm_reset(chosen, len(plan), to)
            reset_positions(store, chosen, plan)
        finally:
            store.close()
            event_log.close()
    console.print(f"reset {len(plan)} positions of {chosen.name} to the log's {to}")


def _print_reset_plan(service: Service, plan: list[PositionReset]) -> None:
    table = Table(title=f"{service.name}: stored positions and the log")
    for column in ("partition", "stored", "log start", "log end", "reset to"):
        table.add_column(column, justify="left" if column == "partition" else "right")
    for row in plan:
        table.add_row(
            str(row.partition),
            dash(row.stored),
            str(row.log_start),
            str(row.log_end),
            str(row.to),
        )
    console.print(table)
    beyond = sum(row.beyond_end for row in plan)
    if beyond:
        console.print(
            f"{beyond} stored positions lie beyond the log's end: the log was recreated or "
            "truncated, and workers would skip every new record until it grew past them"
        )


def _confirm_reset(service: Service, positions: int, to: ResetTarget) -> None:
    if not sys.stdin.isatty():
        raise LoglaneError(
            "reset asks for confirmation and there is no terminal to ask on; "
            "pass --yes to reset without asking"
        )
    question = (
        f"Stop every worker of {service.name} first. Reset {positions} positions to the log's {to}?"
    )
    if not typer.confirm(question):
        console.print("nothing was reset")
        raise typer.Exit(1)
