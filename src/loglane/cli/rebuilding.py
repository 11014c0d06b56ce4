"""`rebuild`: rebuild a service's views by replay while its workers serve, then swap them in."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from loglane.cli._common import App, DbURL, LogURL, app, clear_errors, console
from loglane.errors import LoglaneError
from loglane.landscape import load_landscape
from loglane.rebuild import Rebuild, RebuildProgress, RebuildResult
from loglane.urls import DEFAULT_DB_URL, DEFAULT_LOG_URL, open_log, open_store


@app.command()
def rebuild(
    app_path: App,
    service: Annotated[str, typer.Option(help="The service whose views to rebuild")],
    view: Annotated[
        list[str] | None,
        typer.Option(help="Swap in only this view (repeatable; default: every view)"),
    ] = None,
    accept_gap: Annotated[
        bool,
        typer.Option(
            "--accept-gap",
            help="Rebuild from what the log retains when retention dropped records it needs",
        ),
    ] = False,
    swap_lag: Annotated[
        int, typer.Option(help="Swap once the replay is this many records behind the workers")
    ] = 1000,
    yes: Annotated[bool, typer.Option("--yes", help="Rebuild without asking")] = False,
    log: LogURL = DEFAULT_LOG_URL,
    db: DbURL = DEFAULT_DB_URL,
) -> None:
    """Rebuild a service's views by replaying its retained input into shadow tables while
    its workers keep serving, then swap them in atomically. Nothing is published or
    answered again. Interrupted, it resumes where it stopped when run again."""
    with clear_errors():
        chosen = load_landscape(app_path).service(service)
        event_log = open_log(log)
        store = open_store(db, chosen.name)
        try:
            job = Rebuild(
                chosen, event_log, store, views=view or (), accept_gap=accept_gap, swap_lag=swap_lag
            )
            if not yes:
                _confirm(chosen.name, [v.name for v in job.views])
            started = time.monotonic()
            with _progress_display() as show:
                job.on_progress = show
                result = job.run()
        finally:
            store.close()
            event_log.close()
    _print_result(result, time.monotonic() - started)


class _Rate(ProgressColumn):
    """Events replayed per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


@contextmanager
def _progress_display() -> Iterator[Callable[[RebuildProgress], None]]:
    """A rich bar on a terminal (events, rate, ETA); elsewhere a plain line a second."""
    if console.is_terminal:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            _Rate(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("replaying", total=None)

            def show(progress: RebuildProgress) -> None:
                description = "swapping" if progress.swapping else "replaying"
                total = max(progress.live, progress.replayed)
                bar.update(task, completed=progress.replayed, total=total, description=description)

            yield show
        return
    lines = _Lines()
    yield lines.show


class _Lines:
    """Progress as a line a second, for logs and pipes: events, rate, time left."""

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None
        self._last_line = 0.0

    def show(self, progress: RebuildProgress) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, progress.replayed)
        if not progress.swapping and now - self._last_line < 1.0:
            return
        self._last_line = now
        since, at_first = self._first
        rate = (progress.replayed - at_first) / (now - since) if now > since else 0.0
        left = f"{progress.behind / rate:,.0f}s" if rate > 0 else "-"
        state = "swapping at" if progress.swapping else "replayed"
        console.print(
            f"{state} {progress.replayed:,}/{progress.live:,} events, {rate:,.0f}/s, ETA {left}",
            highlight=False,
            soft_wrap=True,
        )


def _confirm(service: str, views: list[str]) -> None:
    if not sys.stdin.isatty():
        raise LoglaneError(
            "rebuild asks for confirmation and there is no terminal to ask on; "
            "pass --yes to rebuild without asking"
        )
    question = (
        f"Rebuild {', '.join(views)} of {service} by replay and swap them in? "
        "Its workers keep running"
    )
    if not typer.confirm(question):
        console.print("nothing was rebuilt")
        raise typer.Exit(1)


def _print_result(result: RebuildResult, seconds: float) -> None:
    where = ", ".join(f"{tp}@{offset}" for tp, offset in sorted(result.positions.items()))
    console.print(
        f"rebuilt {', '.join(result.views)} of {result.service}: {result.handled:,} events "
        f"replayed in {seconds:.1f}s, swapped in at {where or 'the start'}",
        highlight=False,
        soft_wrap=True,
    )
