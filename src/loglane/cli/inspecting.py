"""`status` and `send`: look at a landscape and post to it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from loglane.cli._common import App, DbURL, LogURL, app, clear_errors, console, dash, errors
from loglane.commands import post
from loglane.errors import LoglaneError
from loglane.landscape import Landscape, load_landscape
from loglane.service import Service
from loglane.status import service_status
from loglane.urls import DEFAULT_DB_URL, DEFAULT_LOG_URL, open_log, open_store
from loglane.worker import ensure_topics


@app.command()
def status(app_path: App, log: LogURL = DEFAULT_LOG_URL, db: DbURL = DEFAULT_DB_URL) -> None:
    """Per service and partition: log end, stored position, committed offset, lag, outbox."""
    with clear_errors():
        landscape = load_landscape(app_path)
        event_log = open_log(log)
        table = Table(title="Loglane status")
        for column in ("service", "partition", "log end", "stored", "committed", "lag", "outbox"):
            table.add_column(
                column, justify="left" if column in ("service", "partition") else "right"
            )
        dead: list[str] = []
        for service in landscape:
            store = open_store(db, service.name)
            found = service_status(service, event_log, store)
            store.close()
            for row in found.partitions:
                table.add_row(
                    service.name,
                    str(row.partition),
                    str(row.log_end),
                    dash(row.stored),
                    dash(row.committed),
                    str(row.lag),
                    str(row.outbox),
                )
            dead.append(f"{service.name}: {found.dead_letters}")
        event_log.close()
    console.print(table)
    console.print("dead letters  " + "  ".join(dead))


@app.command()
def send(
    app_path: App,
    command_type: Annotated[str, typer.Argument(help="e.g. CreateCustomer")],
    body: Annotated[str, typer.Argument(help="The command as JSON")],
    service: Annotated[str | None, typer.Option(help="The service to post to")] = None,
    request_id: Annotated[str | None, typer.Option(help="Your own request id")] = None,
    log: LogURL = DEFAULT_LOG_URL,
) -> None:
    """Post one command to a service's input topic and print its request id and position."""
    with clear_errors():
        landscape = load_landscape(app_path)
        target = _service_accepting(landscape, command_type, service)
        try:
            command = target.commands[command_type].model_validate_json(body)
        except ValidationError as exc:
            errors.print(f"[red]error:[/red] invalid {command_type}: {exc}", highlight=False)
            raise typer.Exit(2) from None
        event_log = open_log(log)
        ensure_topics(event_log, list(landscape))
        rid, position = post(event_log, target, command, request_id=request_id)
        event_log.close()
    console.print_json(
        json.dumps(
            {
                "request_id": rid,
                "topic": position.topic,
                "partition": position.partition,
                "offset": position.offset,
            }
        )
    )


def _service_accepting(landscape: Landscape, command_type: str, name: str | None) -> Service:
    candidates = [landscape.service(name)] if name else list(landscape)
    owners = [s for s in candidates if command_type in s.commands]
    if len(owners) != 1:
        accepted = sorted({t for s in candidates for t in s.commands})
        raise LoglaneError(
            f"{command_type!r} is accepted by {len(owners)} services; "
            f"commands here: {', '.join(accepted)} (use --service)"
        )
    return owners[0]
