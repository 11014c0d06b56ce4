"""`status`, `send`, `get` and `request`: look at a landscape and post to it."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from loglane.cli._common import App, DbURL, LogURL, app, clear_errors, console, dash, errors
from loglane.cli._output import JsonFlag, add_id_column, add_text_column, print_json
from loglane.commands import post
from loglane.dlq import LetterFilter, list_letters
from loglane.errors import LoglaneError
from loglane.landscape import Landscape, load_landscape
from loglane.service import Service
from loglane.status import ServiceStatus, service_status
from loglane.stores.base import RequestOutcome, RequestStatus, Store
from loglane.urls import DEFAULT_DB_URL, DEFAULT_LOG_URL, open_log, open_store
from loglane.views import View
from loglane.worker import ensure_topics


@app.command()
def status(
    app_path: App,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
    as_json: JsonFlag = False,
) -> None:
    """Per service and partition: log end, stored position, committed offset, lag, outbox;
    and each service's pending dead letters."""
    with clear_errors():
        landscape = load_landscape(app_path)
        event_log = open_log(log)
        found: list[ServiceStatus] = []
        for service in landscape:
            store = open_store(db, service.name)
            found.append(service_status(service, event_log, store))
            store.close()
        event_log.close()
    if as_json:
        print_json({"services": [_status_json(one) for one in found]})
        return
    rows = [(one.service, str(row.partition), row) for one in found for row in one.partitions]
    table = Table(title="Loglane status")
    add_id_column(table, "service", [name for name, _, _ in rows])
    add_id_column(table, "partition", [partition for _, partition, _ in rows])
    for column in ("log end", "stored", "committed", "lag", "outbox"):
        table.add_column(column, justify="right")
    for name, partition, row in rows:
        table.add_row(
            name,
            partition,
            str(row.log_end),
            dash(row.stored),
            dash(row.committed),
            str(row.lag),
            str(row.outbox),
        )
    console.print(table)
    console.print(
        "dead letters  " + "  ".join(f"{one.service}: {one.dead_letters}" for one in found)
    )


def _status_json(found: ServiceStatus) -> dict[str, Any]:
    return {
        "service": found.service,
        "lag": found.lag,
        "dead_letters": found.dead_letters,
        "dead_letters_total": found.dead_letters_total,
        "partitions": [
            {
                "topic": row.partition.topic,
                "partition": row.partition.partition,
                "log_end": row.log_end,
                "stored": row.stored,
                "committed": row.committed,
                "lag": row.lag,
                "outbox": row.outbox,
            }
            for row in found.partitions
        ],
    }


@app.command()
def send(
    app_path: App,
    command_type: Annotated[str, typer.Argument(help="e.g. CreateCustomer")],
    body: Annotated[str, typer.Argument(help="The command as JSON")],
    service: Annotated[str | None, typer.Option(help="The service to post to")] = None,
    request_id: Annotated[str | None, typer.Option(help="Your own request id")] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Seconds to wait for the outcome, which is printed too; the exit status is "
            "then 0 only if the request is done (1 if rejected, failed or still pending)",
        ),
    ] = None,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
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
        answer: dict[str, Any] = {
            "request_id": rid,
            "topic": position.topic,
            "partition": position.partition,
            "offset": position.offset,
        }
        if wait is None:
            print_json(answer)
            return
        store = open_store(db, target.name)
        try:
            outcome = await_outcome(store, target.name, rid, wait)
        finally:
            store.close()
    answer.update(_outcome_json(outcome))
    print_json(answer)
    if outcome is None or outcome.status is not RequestStatus.DONE:
        raise typer.Exit(1)


def await_outcome(
    store: Store, service: str, request_id: str, timeout: float
) -> RequestOutcome | None:
    """The outcome of `request_id` once a worker recorded it, or None after `timeout` seconds.

    The store is asked again only when its change marker moves (a cheap check on SQLite), or
    every 50 ms on a store without one.
    """
    deadline = time.monotonic() + timeout
    seen: int | None = None
    asked = False
    while True:
        marker = store.change_marker()
        if not asked or marker is None or marker != seen:
            seen, asked = marker, True
            outcome = store.request(service, request_id)
            if outcome is not None:
                return outcome
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(0.005 if marker is not None else 0.05, remaining))


def _outcome_json(outcome: RequestOutcome | None) -> dict[str, Any]:
    """The outcome as the HTTP API answers it: status, detail and the emitted events."""
    if outcome is None:
        return {"status": RequestStatus.PENDING.value, "detail": None, "events": []}
    from loglane.api.models import output_event  # the HTTP API's shape, loaded only here

    return {
        "status": outcome.status.value,
        "detail": outcome.detail,
        "events": [output_event(message).model_dump(mode="json") for message in outcome.events],
    }


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


@app.command()
def get(
    app_path: App,
    view: Annotated[str, typer.Argument(help="The view: its name, or service/view")],
    key: Annotated[str, typer.Argument(help="The row's key")],
    service: Annotated[str | None, typer.Option(help="The service whose view it is")] = None,
    db: DbURL = DEFAULT_DB_URL,
) -> None:
    """Print one row of a view as JSON, as `GET /<service>/views/<view>/<key>` answers."""
    with clear_errors():
        chosen = _find_view(load_landscape(app_path), view, service)
        store = open_store(db, chosen.service)
        try:
            row = store.get(chosen, _key(chosen, key))
        finally:
            store.close()
        if row is None:
            raise LoglaneError(
                f"{chosen.service}/{chosen.name} has no row with {chosen.key} = {key!r}"
            )
    print_json(row.model_dump(mode="json"))


def _find_view(landscape: Landscape, name: str, service: str | None) -> View[Any]:
    if "/" in name:
        service, _, name = name.partition("/")
    services = [landscape.service(service)] if service else list(landscape)
    found = [s.views[name] for s in services if name in s.views]
    if len(found) == 1:
        return found[0]
    every = ", ".join(f"{s.name}/{v}" for s in services for v in sorted(s.views)) or "none"
    if found:
        raise LoglaneError(
            f"{len(found)} services have a view {name!r}: name one as service/view ({every})"
        )
    raise LoglaneError(f"no view {name!r}; views here: {every}")


def _key(view: View[Any], text: str) -> str | int:
    if view.key_kind is not int:
        return text
    try:
        return int(text)
    except ValueError:
        raise LoglaneError(f"{view.name}'s key {view.key} is an integer, not {text!r}") from None


@app.command()
def request(
    app_path: App,
    request_id: Annotated[str, typer.Argument(help="The request id `send` or a POST gave")],
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
    as_json: JsonFlag = False,
) -> None:
    """What became of a request in each service: its status, detail, events and dead letters."""
    with clear_errors():
        landscape = load_landscape(app_path)
        event_log = open_log(log)
        found: list[dict[str, Any]] = []
        try:
            for service in landscape:
                store = open_store(db, service.name)
                try:
                    outcome = store.request(service.name, request_id)
                    accepted = store.accepted(service.name, request_id)
                finally:
                    store.close()
                letters = list_letters(event_log, service, where=LetterFilter(request=request_id))
                if outcome is None and accepted is None and not letters:
                    continue
                state = _outcome_json(outcome)
                if outcome is None and accepted is None:
                    # not a command here: an event the request caused failed in this service
                    state.update(status=RequestStatus.FAILED.value, detail=letters[0].reason)
                found.append(
                    {
                        "service": service.name,
                        **state,
                        "dead_letters": [letter.id for letter in letters],
                    }
                )
        finally:
            event_log.close()
        if not found:
            raise LoglaneError(
                f"no service of {app_path} knows request {request_id!r}: it was never posted, "
                "or its outcome was forgotten after the retention period"
            )
    if as_json:
        print_json({"request_id": request_id, "services": found})
        return
    table = Table(title=f"request {request_id}")
    add_id_column(table, "service", [one["service"] for one in found])
    table.add_column("status", no_wrap=True)
    add_text_column(table, "events")
    add_text_column(table, "dead letters")
    add_text_column(table, "detail")
    for one in found:
        table.add_row(
            one["service"],
            one["status"],
            ", ".join(event["type"] for event in one["events"]) or "-",
            ", ".join(one["dead_letters"]) or "-",
            (one["detail"] or "-").split("\n", 1)[0],
        )
    console.print(table)
