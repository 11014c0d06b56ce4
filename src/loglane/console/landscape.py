"""The landscape page: every service with its topics, and who follows whom, as a graph.

A service that handles events with `source=` another service follows that service's
output topic. The graph lays services out in columns by how far downstream they are (a
service that follows nobody stands in the first column), draws each as a box with its input,
output and dead-letter topics, and an arrow from a service's output topic to each follower,
labelled with the event types it takes from there. The SVG is computed here and drawn by the
template, so the page needs no script to show it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loglane.console.context import Console
from loglane.dlq import pending_count
from loglane.service import Service
from loglane.status import service_status

if TYPE_CHECKING:
    from loglane.api.runtime import ServiceRuntime

BOX_WIDTH = 250
COLUMN_GAP = 150
ROW_GAP = 40
MARGIN = 30
HEADER = 34
LINE = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Follow:
    """`follower` handles `event_types` from `source`'s output topic."""

    source: str
    follower: str
    event_types: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    """How a service stands, for the graph's boxes; `problem` when it cannot be read."""

    lag: int | None = None
    dead_letters: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Box:
    name: str
    served: bool
    x: int
    y: int
    height: int
    lines: tuple[tuple[str, str], ...]  # (kind, text): in, out, dlq, command, view
    figures: Figures

    @property
    def out_y(self) -> int:
        """Where arrows to this service's followers leave its box: the output topic's line."""
        for index, (kind, _) in enumerate(self.lines):
            if kind == "out":
                return self.y + HEADER + index * LINE + LINE // 2
        return self.y + HEADER // 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrow:
    follow: Follow
    path: str
    label_x: int
    label_y: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Graph:
    boxes: tuple[Box, ...]
    arrows: tuple[Arrow, ...]
    width: int
    height: int


def follows(services: Iterable[Service]) -> list[Follow]:
    """Who follows whom, from the handlers' topics."""
    found: list[Follow] = []
    for service in services:
        by_source: dict[str, list[str]] = {}
        for handler in service.handlers:
            if handler.topic != service.input_topic:
                source = handler.topic.removesuffix(".out")
                by_source.setdefault(source, []).append(handler.event_type.event_type)
        found.extend(
            Follow(source=source, follower=service.name, event_types=tuple(sorted(types)))
            for source, types in sorted(by_source.items())
        )
    return found


def columns(names: Iterable[str], edges: Iterable[Follow]) -> dict[str, int]:
    """Each service's column: one past the furthest of the services it follows. A cycle of
    followers cannot push a column past the number of services."""
    names = list(names)
    edges = list(edges)
    column = dict.fromkeys(names, 0)
    for _ in names:
        moved = False
        for edge in edges:
            wanted = min(column.get(edge.source, 0) + 1, len(names) - 1)
            if edge.source != edge.follower and column[edge.follower] < wanted:
                column[edge.follower] = wanted
                moved = True
        if not moved:
            break
    return column


def layout(services: Mapping[str, Service], figures: Mapping[str, Figures]) -> Graph:
    """Boxes and arrows of the served `services` and the unserved services they follow."""
    edges = follows(services.values())
    names = list(services)
    names += sorted({edge.source for edge in edges} - set(names))
    column = columns(names, edges)
    boxes: dict[str, Box] = {}
    heights: dict[int, int] = {}
    for name in names:
        service = services.get(name)
        lines = _lines(service) if service is not None else (("note", "not served here"),)
        height = HEADER + LINE * len(lines) + 8
        x = MARGIN + column[name] * (BOX_WIDTH + COLUMN_GAP)
        y = MARGIN + heights.get(column[name], 0)
        heights[column[name]] = heights.get(column[name], 0) + height + ROW_GAP
        boxes[name] = Box(
            name=name,
            served=service is not None,
            x=x,
            y=y,
            height=height,
            lines=lines,
            figures=figures.get(name, Figures()),
        )
    arrows = [_arrow(edge, boxes[edge.source], boxes[edge.follower]) for edge in edges]
    width = MARGIN * 2 + (max(column.values()) + 1) * BOX_WIDTH
    width += max(column.values()) * COLUMN_GAP
    height = MARGIN * 2 + max(heights.values()) - ROW_GAP
    return Graph(boxes=tuple(boxes.values()), arrows=tuple(arrows), width=width, height=height)


def _lines(service: Service) -> tuple[tuple[str, str], ...]:
    lines = [("in", service.input_topic)]
    lines += [("command", name) for name in sorted(service.commands)]
    lines += [("out", service.output_topic), ("dlq", service.dlq_topic)]
    lines += [("view", name) for name in sorted(service.views)]
    return tuple(lines)


def _arrow(edge: Follow, source: Box, follower: Box) -> Arrow:
    x1, y1 = source.x + BOX_WIDTH, source.out_y
    x2, y2 = follower.x, follower.y + HEADER // 2
    if x2 <= x1:  # a follower in the same or an earlier column: loop round its left side
        x2, bend = follower.x, 80
        path = f"M {x1} {y1} C {x1 + bend} {y1}, {x2 - bend} {y2}, {x2} {y2}"
    else:
        middle = (x1 + x2) // 2
        path = f"M {x1} {y1} C {middle} {y1}, {middle} {y2}, {x2} {y2}"
    return Arrow(follow=edge, path=path, label_x=x1 + 10, label_y=y1 - 7)


async def figures_of(runtimes: Mapping[str, ServiceRuntime]) -> dict[str, Figures]:
    """Lag and pending dead letters per service; a service whose backends are down says so."""
    found: dict[str, Figures] = {}
    for name, runtime in runtimes.items():
        try:
            await runtime.open()
            found[name] = await run_in_threadpool(_figures, runtime)
        except Exception as exc:
            found[name] = Figures(problem=f"{type(exc).__name__}: {exc}")
    return found


def _figures(runtime: ServiceRuntime) -> Figures:
    status = service_status(runtime.service, runtime.log, runtime.store)
    dead = pending_count(runtime.log, runtime.store, runtime.service)
    return Figures(lag=status.lag, dead_letters=dead)


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.get("")
    async def landscape(request: Request) -> Response:
        services = {name: runtime.service for name, runtime in console.runtimes.items()}
        figures = await figures_of(console.runtimes)
        graph = layout(services, figures)
        return console.page(
            request, "landscape.html", graph=graph, follows=follows(services.values())
        )

    return routes
