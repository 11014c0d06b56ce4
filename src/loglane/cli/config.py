"""`config`: the settings `run`, `worker` and `api` would use, and where each came from."""

from __future__ import annotations

import os

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
    app,
    clear_errors,
    console,
)
from loglane.landscape import load_landscape
from loglane.settings import Settings, effective, variable


@app.command()
def config(
    app_path: SettingApp = None,
    service: Services = None,
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
    probe_port: ProbePort = None,
) -> None:
    """Print the effective settings for APP with these options, as LOGLANE_… lines; API tokens
    and passwords in URLs are masked. Each line says whether it came from an option, the
    environment or the default."""
    given: dict[str, object] = {
        "app": app_path,
        "service": service,
        "log": log,
        "db": db,
        "log_format": log_format,
        "log_level": log_level,
        "batch_size": batch_size,
        "workers": workers,
        "api": api,
        "host": host,
        "port": port,
        "api_tokens": api_token,
        "probe_port": probe_port,
    }
    with clear_errors():
        settings = Settings.resolve(**given)
        landscape = load_landscape(settings.app)
    lines = effective(settings, given, os.environ)
    width = max(len(variable(line.name)) + 1 + len(line.shown) for line in lines)
    for line in lines:
        assignment = f"{variable(line.name)}={line.shown}"
        console.print(
            f"{assignment:<{width}}  # {line.source}", highlight=False, markup=False, soft_wrap=True
        )
    names = ", ".join(service.name for service in landscape)
    console.print(f"# services in {settings.app}: {names}", highlight=False, markup=False)
