"""`run`, `api`, `worker` and `demo`: the commands that run services."""

from __future__ import annotations

import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from loglane import diagnostics, tracing
from loglane.cli._common import (
    BatchSize,
    Host,
    LogFormat,
    LogLevel,
    Port,
    ProbePort,
    ServeApi,
    Services,
    SettingApp,
    SettingDb,
    SettingLog,
    Tokens,
    Workers,
    WorkerService,
    app,
    clear_errors,
    console,
)
from loglane.errors import ConfigurationError
from loglane.landscape import load_landscape
from loglane.probes import serve_probes
from loglane.runner import WorkerThreads, freeze_startup_objects
from loglane.service import Service
from loglane.settings import Settings
from loglane.urls import open_log, open_store
from loglane.worker import ensure_topics


def _run_until_signalled(threads: WorkerThreads) -> None:
    """Start the workers and run until SIGINT or SIGTERM; then each finishes its batch."""

    def stop(signum: int, frame: object) -> None:
        threads.stop.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with clear_errors():
        threads.start()
    freeze_startup_objects()
    while not threads.stop.wait(0.5):
        pass
    threads.join(timeout=60)
    if threads.failures:
        raise typer.Exit(1)


def _settings(**options: object) -> Settings:
    """A command's settings (its options over LOGLANE_… variables), its logging configured."""
    with clear_errors():
        settings = Settings.resolve(**options)
    diagnostics.configure(settings.log_format, settings.log_level)
    with clear_errors():
        tracing.configure_from_environment()
    return settings


@app.command()
def run(
    app_path: SettingApp = None,
    log: SettingLog = None,
    db: SettingDb = None,
    log_format: LogFormat = None,
    log_level: LogLevel = None,
    batch_size: BatchSize = None,
    workers: Workers = None,
    api: ServeApi = None,
    host: Host = None,
    port: Port = None,
    api_token: Tokens = None,
) -> None:
    """Run every service in APP in this process: its workers and its HTTP API on one port."""
    settings = _settings(
        app=app_path,
        log=log,
        db=db,
        log_format=log_format,
        log_level=log_level,
        batch_size=batch_size,
        workers=workers,
        api=api,
        host=host,
        port=port,
        api_tokens=api_token,
    )
    with clear_errors():
        landscape = load_landscape(settings.app)
        threads = WorkerThreads(
            list(landscape) * settings.workers,
            log_url=settings.log,
            db_url=settings.db,
            batch_size=settings.batch_size,
        )
    if not settings.api:
        _run_until_signalled(threads)
        return
    _serve(list(landscape), settings, threads=threads)


@app.command(name="api")
def serve_api(
    app_path: SettingApp = None,
    service: Services = None,
    log: SettingLog = None,
    db: SettingDb = None,
    log_format: LogFormat = None,
    log_level: LogLevel = None,
    host: Host = None,
    port: Port = None,
    api_token: Tokens = None,
) -> None:
    """Serve the HTTP API of services in APP, without workers (run those with `worker`)."""
    settings = _settings(
        app=app_path,
        service=service,
        log=log,
        db=db,
        log_format=log_format,
        log_level=log_level,
        host=host,
        port=port,
        api_tokens=api_token,
    )
    with clear_errors():
        landscape = load_landscape(settings.app)
        chosen = [landscape.service(name) for name in settings.service] or list(landscape)
    _serve(chosen, settings, threads=None)


def _serve(
    services: list[Service],
    settings: Settings,
    *,
    threads: WorkerThreads | None,
    banner: Callable[[str], None] | None = None,
) -> None:
    """Serve the API of `services` in the main thread, with `threads` running beside it.

    Returns on SIGINT or SIGTERM (uvicorn handles them), or when a worker fails.
    """
    from loglane.api import create_app
    from loglane.api.serve import listen, serve, stop_on_signals, url_of

    stop = threads.stop if threads is not None else threading.Event()
    stop_on_signals(stop)
    with clear_errors():
        sock = listen(settings.host, settings.port)
        event_log = open_log(settings.log)
        ensure_topics(event_log, services)
        application = create_app(
            services,
            event_log,
            lambda name: open_store(settings.db, name),
            tokens=settings.api_tokens,
            settings=settings.api_settings(),
        )
        if threads is not None:
            threads.on_commit = application.state.loglane.committed
            threads.start()
    freeze_startup_objects()
    url = url_of(sock)
    names = ", ".join(service.name for service in services)
    console.print(f"serving the API of {names} on {url} (docs: {url}/docs); Ctrl-C stops")
    if banner is not None:
        banner(url)
    try:
        serve(
            application,
            sock,
            stop,
            read_timeout=settings.api_read_timeout,
            idle_timeout=settings.api_idle_timeout,
        )
    finally:
        if threads is not None:
            threads.join(timeout=60)
        event_log.close()
    if threads is not None and threads.failures:
        raise typer.Exit(1)


@app.command()
def worker(
    app_path: SettingApp = None,
    service: WorkerService = None,
    log: SettingLog = None,
    db: SettingDb = None,
    log_format: LogFormat = None,
    log_level: LogLevel = None,
    batch_size: BatchSize = None,
    host: Host = None,
    probe_port: ProbePort = None,
) -> None:
    """Run one worker of one service; start several to split its partitions. With
    --probe-port, serve /healthz, /readyz and /metrics."""
    settings = _settings(
        app=app_path,
        service=[service] if service else None,
        log=log,
        db=db,
        log_format=log_format,
        log_level=log_level,
        batch_size=batch_size,
        host=host,
        probe_port=probe_port,
    )
    with clear_errors():
        chosen = load_landscape(settings.app).service(settings.one_service())
        threads = WorkerThreads(
            [chosen], log_url=settings.log, db_url=settings.db, batch_size=settings.batch_size
        )
    if settings.probe_port is None:
        _run_until_signalled(threads)
        return
    with clear_errors():
        try:
            probes, progress = serve_probes(threads, host=settings.host, port=settings.probe_port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve the probes on {settings.host}:{settings.probe_port}: {exc}"
            ) from None
    console.print(f"probes on {probes.url}: /healthz, /readyz, /metrics")
    try:
        _run_until_signalled(threads)
    finally:
        probes.close()
        progress.close()


@app.command()
def demo(
    commands: Annotated[int, typer.Option(help="How many commands to generate")] = 2000,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Keep the log and views here (default: a new temp folder)"),
    ] = None,
    serve: Annotated[bool, typer.Option(help="Then serve the shop's HTTP API until Ctrl-C")] = True,
    host: Annotated[str, typer.Option(help="Address the HTTP API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the HTTP API listens on")] = 8000,
) -> None:
    """Run the example shop (customers and orders) on the embedded log and SQLite views,
    then serve its HTTP API with its workers."""
    from loglane.demo import print_result, run_demo
    from loglane.examples import shop

    diagnostics.configure("text", "WARNING")
    with clear_errors():
        tracing.configure_from_environment()
    folder = directory or Path(tempfile.mkdtemp(prefix="loglane-demo-"))
    with clear_errors():
        result = run_demo(folder, commands, console)
    print_result(result, folder, console)
    if not serve:
        return
    with clear_errors():
        settings = Settings.resolve(
            app=shop.__name__,
            log=f"embedded:///{folder}/log.db?synchronous=normal",
            db=f"sqlite:///{folder}/{{service}}.db",
            host=host,
            port=port,
        )
    threads = WorkerThreads(list(shop.landscape), log_url=settings.log, db_url=settings.db)
    _serve(list(shop.landscape), settings, threads=threads, banner=_demo_banner)


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
