"""The request page: one request's path through every service, live while it is in flight.

A request leaves traces in three places, and the path is put together from all of them:

- each service's store: the command ledger (when the API accepted it, where it landed) and
  the request's outcome (done, rejected or failed, with the events it emitted and, for a
  failure, the error with its traceback);
- the services' topics: every event emitted because of the request carries its id as
  `ce_correlationid`, on `<service>.out`, on `<service>.dlq` when it failed, and on
  `<service>.in` again when it was re-driven. These are searched from their end back to a
  little before the request began, at most `search.SCAN_LIMIT` records per partition;
- the followers' stored positions: an event at offset o of `orders`' input partition is
  applied once `orders` stored a position past o, which is how a service that follows
  another (and emits nothing itself) shows on the path.

The request is done once some service knows it and nothing on its path is still waiting: no
command unhandled, no emitted event unpublished, no follower short of an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loglane import dlq
from loglane.api.storable import flaw
from loglane.console.context import PREFIX, Console
from loglane.console.search import correlated_with, search
from loglane.errors import ConfigurationError
from loglane.records import Message, Record, TopicPartition
from loglane.stores.base import RequestStatus

if TYPE_CHECKING:
    from loglane.api.runtime import ServiceRuntime

SKEW = 5.0  # seconds: records a little older than the request's start are searched too


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One thing that happened to the request (or is still awaited), in one service."""

    service: str
    status: str  # the badge: accepted, appended, done, rejected, failed, published, applied,
    # waiting, dead
    title: str
    at: float | None = None  # epoch seconds, when known
    detail: str | None = None
    payload: str | None = None
    link: str | None = None
    after: float | None = None  # for sorting a step without a time: what it follows


@dataclass(slots=True, kw_only=True)
class RequestPath:
    request_id: str
    steps: list[Step] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # service -> what it did
    waiting: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return bool(self.steps)

    @property
    def done(self) -> bool:
        return self.known and not self.waiting

    @property
    def started(self) -> float | None:
        times = [step.at for step in self.steps if step.at is not None]
        return min(times) if times else None

    def ordered(self) -> list[Step]:
        """The steps in time order; a step without a time right after what it follows."""
        last = self.started or 0.0
        keyed: list[tuple[float, int, Step]] = []
        for index, step in enumerate(self.steps):
            when = step.at if step.at is not None else step.after
            keyed.append((when if when is not None else last, index, step))
        return [step for _, _, step in sorted(keyed, key=lambda item: (item[0], item[1]))]


def trace(request_id: str, runtimes: Mapping[str, ServiceRuntime]) -> RequestPath:
    """The path of `request_id` through the open services of `runtimes`, as it stands now."""
    path = RequestPath(request_id=request_id)
    log = next(iter(runtimes.values())).log
    inputs: dict[tuple[str, int, int], Record] = {}
    published: dict[str, tuple[str, float | None]] = {}  # emitted, not yet seen on a topic
    for runtime in runtimes.values():
        _from_store(path, runtime, request_id, inputs, published)
    started = path.started
    cutoff = None if started is None else int((started - SKEW) * 1000)
    correlated = correlated_with(request_id)
    failed: set[tuple[str, str]] = set()  # (service, place it failed at), letters pending
    for runtime in runtimes.values():
        for record in search(log, runtime.service.dlq_topic, correlated, cutoff):
            _dead_letter(path, runtime, record, failed)
    for runtime in runtimes.values():
        service = runtime.service
        for record in search(log, service.input_topic, correlated, cutoff):
            inputs.setdefault((record.topic, record.partition, record.offset), record)
        for record in search(log, service.output_topic, correlated, cutoff):
            _published(path, runtimes, record, published, failed)
    for (topic, partition, offset), record in sorted(inputs.items()):
        owner = topic.removesuffix(".in")
        headers = _headers(record)
        redriven = headers.get("ce_id") != request_id
        path.steps.append(
            Step(
                service=owner,
                status="appended",
                title=f"{headers.get('ce_type', 'a record')} "
                + ("re-driven to " if redriven else "appended to ")
                + f"{topic}[{partition}] at offset {offset}",
                at=record.timestamp_ms / 1000,
                payload=record.value.decode(errors="replace"),
            )
        )
    for event_id, (emitter, emitted_at) in published.items():
        if event_id:  # still in an outbox: emitted, committed, not on the topic yet
            path.waiting = True
            path.steps.append(
                Step(
                    service=emitter,
                    status="waiting",
                    title=f"event {event_id} waits in the outbox to be published",
                    after=emitted_at,
                )
            )
    return path


def _from_store(
    path: RequestPath,
    runtime: ServiceRuntime,
    request_id: str,
    inputs: dict[tuple[str, int, int], Record],
    published: dict[str, tuple[str, float | None]],
) -> None:
    """What `runtime`'s store knows: the command as accepted, and its outcome."""
    name, store = runtime.name, runtime.store
    try:
        accepted = store.accepted(name, request_id)
    except ConfigurationError:  # a store without a command ledger
        accepted = None
    outcome = store.request(name, request_id)
    if accepted is not None and accepted.position is not None:
        position = accepted.position
        tp = TopicPartition(position.topic, position.partition)
        for record in runtime.log.read(tp, position.offset, 1):
            if record.offset == position.offset:
                inputs[(record.topic, record.partition, record.offset)] = record
        path.steps.append(
            Step(
                service=name,
                status="accepted",
                title="accepted by the HTTP API",
                at=accepted.accepted_at,
            )
        )
    if outcome is None:
        if accepted is not None:
            path.waiting = True
            path.outcomes[name] = "pending"
            path.steps.append(
                Step(
                    service=name,
                    status="waiting",
                    title=f"waiting for a {name} worker to handle it",
                    after=accepted.accepted_at,
                )
            )
        return
    emitted = [_emitted_at(message) for message in outcome.events]
    handled_at = min((when for when in emitted if when is not None), default=None)
    path.outcomes[name] = outcome.status.value
    title = {
        RequestStatus.DONE: f"handled by {name}",
        RequestStatus.REJECTED: f"rejected by {name}",
        RequestStatus.FAILED: f"failed in {name}",
    }.get(outcome.status, f"{outcome.status.value} in {name}")
    if outcome.events:
        types = ", ".join(_headers_of(message).get("ce_type", "?") for message in outcome.events)
        title += f"; emitted {types}"
    path.steps.append(
        Step(
            service=name,
            status=outcome.status.value,
            title=title,
            at=handled_at,
            detail=outcome.detail,
            after=None if accepted is None else accepted.accepted_at,
        )
    )
    for message, when in zip(outcome.events, emitted, strict=True):
        published.setdefault(_headers_of(message).get("ce_id", ""), (name, when))


def _published(
    path: RequestPath,
    runtimes: Mapping[str, ServiceRuntime],
    record: Record,
    published: dict[str, tuple[str, float | None]],
    failed: set[tuple[str, str]],
) -> None:
    """An event of the request on an output topic, and how far each follower got with it."""
    headers = _headers(record)
    event_id = headers.get("ce_id", "")
    published.pop(event_id, None)
    emitter = record.topic.removesuffix(".out")
    at = record.timestamp_ms / 1000  # when it reached the topic; ce_time is when emitted
    path.steps.append(
        Step(
            service=emitter,
            status="published",
            title=f"{headers.get('ce_type', '?')} published on "
            f"{record.topic}[{record.partition}] at offset {record.offset}",
            at=at,
            payload=record.value.decode(errors="replace"),
        )
    )
    tp = record.topic_partition
    place = f"{record.topic}:{record.partition}:{record.offset}"
    event_type = headers.get("ce_type", "")
    for name, runtime in runtimes.items():
        if runtime.service.handler_for(record.topic, event_type) is None:
            continue  # not a follower of this event: its worker passes it by
        if (name, place) in failed:
            path.outcomes[name] = "failed"
            path.steps.append(
                Step(
                    service=name,
                    status="failed",
                    title=f"{name} failed to handle {event_type}; see its dead letter",
                    after=at,
                )
            )
        elif runtime.store.positions(name).get(tp, 0) > record.offset:
            path.steps.append(
                Step(
                    service=name,
                    status="applied",
                    title=f"{name} applied {event_type} (its position in "
                    f"{tp} is past offset {record.offset})",
                    after=at,
                )
            )
            path.outcomes.setdefault(name, "applied")
        else:
            path.waiting = True
            if path.outcomes.get(name) != "failed":
                path.outcomes[name] = "pending"
            path.steps.append(
                Step(
                    service=name,
                    status="waiting",
                    title=f"waiting for {name} to apply {event_type}",
                    after=at,
                )
            )


def _dead_letter(
    path: RequestPath, runtime: ServiceRuntime, record: Record, failed: set[tuple[str, str]]
) -> None:
    letter = dlq.show(runtime.log, runtime.service, dlq.letter_id(record), runtime.store)
    name = runtime.name
    if letter.status is dlq.LetterStatus.PENDING and letter.failed_at is not None:
        failed.add((name, letter.failed_at))
    path.steps.append(
        Step(
            service=name,
            status="dead",
            title=f"{letter.type or 'a record'} from {letter.failed_at or 'an unknown place'} "
            f"dead-lettered by {name} ({letter.status})",
            at=record.timestamp_ms / 1000,
            detail=letter.error,
            link=f"{PREFIX}/services/{name}/dlq/{letter.id}",
        )
    )


def _headers(record: Record) -> dict[str, str]:
    return {name: value.decode(errors="replace") for name, value in record.headers}


def _headers_of(message: Message) -> dict[str, str]:
    return {name: value.decode(errors="replace") for name, value in message.headers}


def _emitted_at(message: Message) -> float | None:
    return _time(_headers_of(message).get("ce_time"))


def _time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    async def traced(request_id: str) -> RequestPath:
        opened: dict[str, ServiceRuntime] = {}
        problems: list[str] = []
        for name, runtime in console.runtimes.items():
            try:
                await runtime.open()
                opened[name] = runtime
            except Exception as exc:
                problems.append(f"{name} is unavailable: {exc}")
        if not opened:
            path = RequestPath(request_id=request_id, waiting=True)
        else:
            path = await run_in_threadpool(trace, request_id, opened)
        path.problems.extend(problems)
        return path

    @routes.get("/requests")
    async def request_page(request: Request) -> Response:
        request_id = request.query_params.get("id", "").strip()
        if not request_id:
            return console.page(request, "request.html", path=None, request_id="")
        problem = _unusable(request_id)
        if problem is not None:
            return console.page(
                request, "request.html", 400, path=None, request_id="", problem=problem
            )
        path = await traced(request_id)
        return console.page(request, "request.html", path=path, request_id=request_id)

    @routes.get("/requests/{request_id}/path")
    async def path_fragment(request: Request, request_id: str) -> Response:
        problem = _unusable(request_id)
        if problem is not None:
            return console.page(
                request, "error.html", 400, heading="Bad request id", message=problem
            )
        path = await traced(request_id)
        return console.page(request, "_path.html", path=path)

    return routes


def _unusable(request_id: str) -> str | None:
    """Why `request_id` cannot be one (the API takes at most 200 characters any store holds)."""
    if len(request_id) > 200:
        return "a request id is at most 200 characters"
    problem = flaw(request_id)
    return None if problem is None else f"this request id {problem}"
