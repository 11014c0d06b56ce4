"""`dlq`: a service's dead letters: list, show, re-drive and drop them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.table import Table

from loglane.cli._common import App, DbURL, LogURL, app, clear_errors, console
from loglane.cli._output import JsonFlag, add_id_column, add_text_column, print_json
from loglane.dlq import LetterFilter, drop, list_letters, redrive, show
from loglane.landscape import load_landscape
from loglane.logs.base import Log
from loglane.service import Service
from loglane.stores.base import Store
from loglane.urls import DEFAULT_DB_URL, DEFAULT_LOG_URL, open_log, open_store

dlq_app = typer.Typer(
    help="List, show, re-drive and drop a service's dead letters.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")
ServiceName = Annotated[str, typer.Option("--service", help="The service whose DLQ this is")]
LetterId = Annotated[str, typer.Argument(help="The dead letter's id, partition:offset")]
TypeFilter = Annotated[str | None, typer.Option("--type", help="Only letters of this event type")]
KeyFilter = Annotated[str | None, typer.Option("--key", help="Only letters with this key")]
ErrorFilter = Annotated[
    str | None, typer.Option("--error", help="Only letters whose error contains this text")
]


@contextmanager
def _opened(app_path: str, service: str, log: str, db: str) -> Iterator[tuple[Service, Log, Store]]:
    chosen = load_landscape(app_path).service(service)
    event_log = open_log(log)
    try:
        store = open_store(db, chosen.name)
        try:
            yield chosen, event_log, store
        finally:
            store.close()
    finally:
        event_log.close()


def _filter(type_: str | None, key: str | None, error: str | None) -> LetterFilter | None:
    if type_ is None and key is None and error is None:
        return None
    return LetterFilter(type=type_, key=key, error=error)


@dlq_app.command("list")
def dlq_list(
    app_path: App,
    service: ServiceName,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
    all_letters: Annotated[
        bool, typer.Option("--all", help="Include dead letters re-driven or dropped already")
    ] = False,
    type_: TypeFilter = None,
    key: KeyFilter = None,
    error: ErrorFilter = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the dead letters of a service: where each came from and why it failed."""
    with clear_errors(), _opened(app_path, service, log, db) as (chosen, event_log, store):
        letters = list_letters(
            event_log,
            chosen,
            store,
            where=_filter(type_, key, error),
            include_handled=all_letters,
        )
    if as_json:
        print_json([letter.as_json() for letter in letters])
        return
    # where each letter failed is in `show` and --json; a narrow terminal leaves it out here
    # so that the error keeps room beside the ids
    wide = console.width >= 120
    table = Table(title=f"{chosen.dlq_topic}: {len(letters)} dead letters")
    add_id_column(table, "id", [letter.id for letter in letters])
    if all_letters:
        table.add_column("status", no_wrap=True)
    if wide:
        add_id_column(table, "from", [letter.failed_at or "-" for letter in letters])
    add_text_column(table, "type")
    add_id_column(table, "request", [letter.request_id or "-" for letter in letters])
    add_text_column(table, "error")
    for letter in letters:
        cells = [
            letter.id,
            *([letter.status.value] if all_letters else []),
            *([letter.failed_at or "-"] if wide else []),
            letter.type or "-",
            letter.request_id or "-",
            letter.reason or "-",
        ]
        table.add_row(*cells)
    console.print(table)


@dlq_app.command("show")
def dlq_show(
    app_path: App,
    letter_id: LetterId,
    service: ServiceName,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
    as_json: JsonFlag = False,
) -> None:
    """Show one dead letter in full: the error with its traceback, headers and payload."""
    with clear_errors(), _opened(app_path, service, log, db) as (chosen, event_log, store):
        letter = show(event_log, chosen, letter_id, store)
    if as_json:
        print_json(letter.as_json())
        return
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    for name, value in (
        ("id", letter.id),
        ("status", letter.status.value),
        ("type", letter.type),
        ("key", letter.key),
        ("request", letter.request_id),
        ("failed at", letter.failed_at),
        ("error", letter.reason),
    ):
        facts.add_row(name, value or "-")
    console.print(facts, highlight=False)
    if letter.traceback:
        console.print()
        console.print(letter.traceback.rstrip("\n"), highlight=False, markup=False, soft_wrap=True)
    headers = Table(title="headers", title_justify="left")
    headers.add_column("name", no_wrap=True)
    headers.add_column("value", overflow="fold")
    for name, value in letter.headers.items():
        if name != "loglane_error":  # shown above, in full
            headers.add_row(name, value)
    console.print()
    console.print(headers, highlight=False)
    console.print()
    console.print("payload", style="bold")
    console.print(letter.payload, highlight=False, markup=False, soft_wrap=True)


@dlq_app.command("redrive")
def dlq_redrive(
    app_path: App,
    service: ServiceName,
    letter_id: Annotated[
        str | None, typer.Argument(help="Re-drive only this dead letter (partition:offset)")
    ] = None,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
    type_: TypeFilter = None,
    key: KeyFilter = None,
    error: ErrorFilter = None,
) -> None:
    """Post dead letters not re-driven or dropped yet back to the service's input topic:
    one by its id, or every one (that matches the filters)."""
    with clear_errors(), _opened(app_path, service, log, db) as (chosen, event_log, store):
        count = redrive(event_log, store, chosen, letter_id, where=_filter(type_, key, error))
    console.print(f"re-drove {count} dead letters to {chosen.input_topic}", highlight=False)


@dlq_app.command("drop")
def dlq_drop(
    app_path: App,
    letter_id: LetterId,
    service: ServiceName,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
) -> None:
    """Mark a dead letter handled without re-driving it: it is no longer listed (see
    `list --all`) and never re-driven."""
    with clear_errors(), _opened(app_path, service, log, db) as (chosen, event_log, store):
        drop(event_log, store, chosen, letter_id)
    console.print(f"dropped dead letter {letter_id} of {chosen.dlq_topic}", highlight=False)
