"""`run`, `api`, `worker` and `demo`: the commands that run services."""

from __future__ import annotations

import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from loglane import diagnostics
from loglane.cli._common import (
    App,
    DbURL,
    Host,
    LogFormat,
    LogURL,
    Port,
    Tokens,
    app,
    clear_errors,
    console,
)
from loglane.landscape import load_landscape
from loglane.runner import WorkerThreads
from loglane.service import Service
from loglane.urls import DEFAULT_DB_URL, DEFAULT_LOG_URL, open_log, open_store
from loglane.worker import ensure_topics


def _run_until_signalled(threads: WorkerThreads) -> None:
    """Start the workers and run until SIGINT or SIGTERM; then each finishes its batch."""

    def stop(signum: int, frame: object) -> None:
        threads.stop.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with clear_errors():
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
    with clear_errors():
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
    with clear_errors():
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
    with clear_errors():
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
    with clear_errors():
        chosen = load_landscape(app_path).service(service)
        threads = WorkerThreads([chosen], log_url=log, db_url=db, batch_size=batch_size)
    _run_until_signalled(threads)


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
    with clear_errors():
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
