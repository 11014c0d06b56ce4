"""The `loglane` command line."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from loglane import diagnostics
from loglane.commands import post
from loglane.dlq import ERROR_HEADER, SOURCE_HEADER, dead_letters, redrive
from loglane.errors import LoglaneError
from loglane.landscape import Landscape, load_landscape
from loglane.reset import PositionReset, ResetTarget, plan_reset, reset_positions
from loglane.runner import WorkerThreads
from loglane.service import Service
from loglane.status import service_status
from loglane.urls import DEFAULT_DB_URL, DEFAULT_LOG_URL, open_log, open_store
from loglane.worker import ensure_topics

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
def _clear_errors() -> Iterator[None]:
    """Turn Loglane's errors into one red line and exit status 2, never a traceback."""
    try:
        yield
    except LoglaneError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _run_until_signalled(threads: WorkerThreads) -> None:
    """Start the workers and run until SIGINT or SIGTERM; then each finishes its batch."""

    def stop(signum: int, frame: object) -> None:
        threads.stop.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with _clear_errors():
        threads.start()
    while not threads.stop.wait(0.5):
        pass
    threads.join(timeout=60)
    if threads.failures:
        raise typer.Exit(1)


@app.command()
def run(
    app_path: App,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
    log_format: LogFormat = "text",
    batch_size: int = 1000,
    workers: Annotated[int, typer.Option(min=1, help="Worker threads per service")] = 1,
    api: Annotated[bool, typer.Option(help="Serve the HTTP API next to the workers")] = True,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    api_token: Tokens = None,
) -> None:
    """Run every service in APP in this process: its workers and its HTTP API on one port."""
    diagnostics.configure(log_format)
    with _clear_errors():
        landscape = load_landscape(app_path)
        threads = WorkerThreads(
            list(landscape) * workers, log_url=log, db_url=db, batch_size=batch_size
        )
    if not api:
        _run_until_signalled(threads)
        return
    _serve(list(landscape), log=log, db=db, host=host, port=port, tokens=api_token, threads=threads)


@app.command(name="api")
def serve_api(
    app_path: App,
    service: Annotated[
        list[str] | None,
        typer.Option(help="A service to serve; repeat for several. Default: every service"),
    ] = None,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
    log_format: LogFormat = "text",
    host: Host = "127.0.0.1",
    port: Port = 8000,
    api_token: Tokens = None,
) -> None:
    """Serve the HTTP API of services in APP, without workers (run those with `worker`)."""
    diagnostics.configure(log_format)
    with _clear_errors():
        landscape = load_landscape(app_path)
        chosen = [landscape.service(name) for name in service] if service else list(landscape)
    _serve(chosen, log=log, db=db, host=host, port=port, tokens=api_token, threads=None)


def _serve(
    services: list[Service],
    *,
    log: str,
    db: str,
    host: str,
    port: int,
    tokens: list[str] | None,
    threads: WorkerThreads | None,
    banner: Callable[[str], None] | None = None,
) -> None:
    """Serve the API of `services` in the main thread, with `threads` running beside it.

    Returns on SIGINT or SIGTERM (uvicorn handles them), or when a worker fails.
    """
    from loglane.api import create_app
    from loglane.api.serve import api_tokens, listen, serve, stop_on_signals, url_of

    stop = threads.stop if threads is not None else threading.Event()
    stop_on_signals(stop)
    with _clear_errors():
        sock = listen(host, port)
        event_log = open_log(log)
        ensure_topics(event_log, services)
        application = create_app(
            services, event_log, lambda name: open_store(db, name), tokens=api_tokens(tokens)
        )
        if threads is not None:
            threads.on_commit = application.state.loglane.committed
            threads.start()
    url = url_of(sock)
    names = ", ".join(service.name for service in services)
    console.print(f"serving the API of {names} on {url} (docs: {url}/docs); Ctrl-C stops")
    if banner is not None:
        banner(url)
    try:
        serve(application, sock, stop)
    finally:
        if threads is not None:
            threads.join(timeout=60)
        event_log.close()
    if threads is not None and threads.failures:
        raise typer.Exit(1)


@app.command()
def worker(
    app_path: App,
    service: Annotated[str, typer.Option(help="The service whose worker this is")],
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
    log_format: LogFormat = "text",
    batch_size: int = 1000,
) -> None:
    """Run one worker of one service; start several to split its partitions."""
    diagnostics.configure(log_format)
    with _clear_errors():
        chosen = load_landscape(app_path).service(service)
        threads = WorkerThreads([chosen], log_url=log, db_url=db, batch_size=batch_size)
    _run_until_signalled(threads)


@app.command()
def status(app_path: App, log: LogURL = DEFAULT_LOG_URL, db: DbURL = DEFAULT_DB_URL) -> None:
    """Per service and partition: log end, stored position, committed offset, lag, outbox."""
    with _clear_errors():
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
                    _dash(row.stored),
                    _dash(row.committed),
                    str(row.lag),
                    str(row.outbox),
                )
            dead.append(f"{service.name}: {found.dead_letters}")
        event_log.close()
    console.print(table)
    console.print("dead letters  " + "  ".join(dead))


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


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
    with _clear_errors():
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


@app.command()
def demo(
    commands: Annotated[int, typer.Option(help="How many commands to generate")] = 2000,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Keep the log and views here (default: a new temp folder)"),
    ] = None,
    serve: Annotated[bool, typer.Option(help="Then serve the shop's HTTP API until Ctrl-C")] = True,
    host: Host = "127.0.0.1",
    port: Port = 8000,
) -> None:
    """Run the example shop (customers and orders) on the embedded log and SQLite views,
    then serve its HTTP API with its workers."""
    from loglane.demo import print_result, run_demo
    from loglane.examples import shop

    diagnostics.configure("text", "WARNING")
    folder = directory or Path(tempfile.mkdtemp(prefix="loglane-demo-"))
    with _clear_errors():
        result = run_demo(folder, commands, console)
    print_result(result, folder, console)
    if not serve:
        return
    log = f"embedded:///{folder}/log.db?synchronous=normal"
    db = f"sqlite:///{folder}/{{service}}.db"
    threads = WorkerThreads(list(shop.landscape), log_url=log, db_url=db)
    _serve(
        list(shop.landscape),
        log=log,
        db=db,
        host=host,
        port=port,
        tokens=[],
        threads=threads,
        banner=_demo_banner,
    )


def _demo_banner(url: str) -> None:
    console.print("try:", style="bold")
    console.print(
        f"  curl -s -X POST '{url}/customers/commands/CreateCustomer?wait=5' "
        '-H \'content-type: application/json\' -d \'{"customer_id": "ada", "name": '
        '"Ada Lovelace"}\'',
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"  curl -s {url}/customers/views/customers/ada", highlight=False)


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
    with _clear_errors():
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
    with _clear_errors():
        chosen = load_landscape(app_path).service(service)
        event_log = open_log(log)
        store = open_store(db, chosen.name)
        count = redrive(event_log, store, chosen)
        store.close()
        event_log.close()
    console.print(f"re-drove {count} dead letters to {chosen.input_topic}")


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
    with _clear_errors():
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
            _dash(row.stored),
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


def main() -> None:
    threading.current_thread().name = "main"
    sys.exit(app())
