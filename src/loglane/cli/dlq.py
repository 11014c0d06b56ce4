"""`dlq`: a service's dead letters."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from loglane.cli._common import App, DbURL, LogURL, app, clear_errors, console
from loglane.dlq import ERROR_HEADER, SOURCE_HEADER, dead_letters, redrive
from loglane.landscape import load_landscape
from loglane.urls import DEFAULT_DB_URL, DEFAULT_LOG_URL, open_log, open_store

dlq_app = typer.Typer(help="List and re-drive a service's dead letters.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
ServiceName = Annotated[str, typer.Option("--service", help="The service whose DLQ this is")]


@dlq_app.command("list")
def dlq_list(
    app_path: App,
    service: ServiceName,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
    all_letters: Annotated[
        bool, typer.Option("--all", help="Include dead letters re-driven already")
    ] = False,
) -> None:
    """Show the dead letters of a service: where each came from and why it failed."""
    with clear_errors():
        chosen = load_landscape(app_path).service(service)
        event_log = open_log(log)
        store = None if all_letters else open_store(db, chosen.name)
        letters = dead_letters(event_log, chosen, store)
        event_log.close()
        if store is not None:
            store.close()
    table = Table(title=f"{chosen.dlq_topic}: {len(letters)} dead letters")
    for column in ("offset", "from", "type", "request", "error"):
        table.add_column(column)
    for letter in letters:
        text = {name: value.decode(errors="replace") for name, value in letter.headers}
        table.add_row(
            f"{letter.partition}:{letter.offset}",
            text.get(SOURCE_HEADER, "-"),
            text.get("ce_type", "-"),
            text.get("ce_correlationid", text.get("ce_id", "-")),
            text.get(ERROR_HEADER, "-"),
        )
    console.print(table)


@dlq_app.command("redrive")
def dlq_redrive(
    app_path: App, service: ServiceName, log: LogURL = DEFAULT_LOG_URL, db: DbURL = DEFAULT_DB_URL
) -> None:
    """Post every dead letter not re-driven yet back to the service's input topic."""
    with clear_errors():
        chosen = load_landscape(app_path).service(service)
        event_log = open_log(log)
        store = open_store(db, chosen.name)
        count = redrive(event_log, store, chosen)
        store.close()
        event_log.close()
    console.print(f"re-drove {count} dead letters to {chosen.input_topic}")
