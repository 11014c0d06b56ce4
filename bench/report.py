"""How every benchmark reports: each run as it ends, then medians with ratios to baselines."""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.table import Table


def print_run(console: Console, run: int, results: dict[str, list[float]]) -> None:
    """The figures of run `run` (counted from 0), one per contender."""
    figures = ", ".join(f"{name} {rates[-1]:,.0f}/s" for name, rates in results.items())
    console.print(f"run {run + 1}: {figures}")


def print_medians(
    console: Console,
    title: str,
    results: dict[str, list[float]],
    *,
    unit: str,
    baselines: dict[str, str],
    first_column: str = "loop",
) -> None:
    """A table of medians; `baselines` maps a column heading ("vs raw") to a contender."""
    medians = {name: statistics.median(rates) for name, rates in results.items()}
    table = Table(title=title)
    table.add_column(first_column)
    table.add_column(unit, justify="right")
    for heading in baselines:
        table.add_column(heading, justify="right")
    for name, median in medians.items():
        ratios = [f"{median / medians[base]:.2f}x" for base in baselines.values()]
        table.add_row(name, f"{median:,.0f}", *ratios)
    console.print(table)
