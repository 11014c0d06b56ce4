"""`POST /<service>/commands/<Type>`: one route per command type the service accepts.

A command is answered only once it is durably appended to `<service>.in`: 202 with its
request id and position, or, with `?wait=SECONDS`, 200 with its outcome and events when
a worker handles it in time. A rejection is an outcome like any other (200, status
`rejected`), not an HTTP error: the request was valid, the service said no.

A request's id is a new UUIDv7, or with an `Idempotency-Key` the UUIDv5 of the service and
the key: every retry maps to the same request id, and as no UUIDv5 equals a UUIDv7, no
key can name a request posted without one, whatever the client sends.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from loglane.api.metrics import ApiMetrics
from loglane.api.models import (
    CommandAccepted,
    Problem,
    RequestState,
    output_event,
    request_state_model,
)
from loglane.api.positions import encode_position
from loglane.api.runtime import Claim, KeyInUseError, ServiceRuntime, fingerprint
from loglane.api.signatures import parameter, with_signature
from loglane.api.storable import check_document
from loglane.api.waiting import settled
from loglane.commands import command_message
from loglane.envelope import new_event_id
from loglane.events import Event
from loglane.records import Position
from loglane.service import Service
from loglane.stores.base import AcceptedCommand, RequestOutcome

logger = logging.getLogger("loglane.api")

IDEMPOTENCY_KEY = r"^[A-Za-z0-9._:~-]{1,200}$"
KEYED_REQUEST_NAMESPACE = uuid.UUID("2a0f6c8e-5b1d-4c37-9e84-6c6f676c616e")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def command_router(
    runtime: ServiceRuntime, metrics: ApiMetrics, landscape: Sequence[Service] = ()
) -> APIRouter:
    """A route per command type of `runtime`; `landscape`, the services served beside it,
    tells which events it emits (see `request_state_model`)."""
    router = APIRouter(tags=[runtime.name])
    state_model = request_state_model(runtime.service, landscape)
    for type_name, command_type in sorted(runtime.service.commands.items()):
        router.add_api_route(
            f"/commands/{type_name}",
            _post_endpoint(runtime, metrics, type_name, command_type),
            methods=["POST"],
            status_code=202,
            response_model=None,
            summary=f"Post a {type_name} command",
            description=(command_type.__doc__ or "").strip(),
            operation_id=f"post_{runtime.name}_{type_name}",
            responses={
                200: {"model": state_model, "description": "Handled within `wait`"},
                202: {"model": CommandAccepted, "description": "Appended; still in flight"},
                409: {"model": Problem, "description": "Same key still being appended"},
                413: {"model": Problem, "description": "Body too large"},
                503: {"model": Problem, "description": "Log or store unavailable"},
            },
        )

    async def unknown_command(command_type: str) -> None:
        accepted = ", ".join(sorted(runtime.service.commands)) or "no commands"
        raise HTTPException(
            404, f"{runtime.name} has no command type {command_type!r}; it accepts {accepted}"
        )

    router.add_api_route(
        "/commands/{command_type}", unknown_command, methods=["POST"], include_in_schema=False
    )
    return router


def _post_endpoint(
    runtime: ServiceRuntime, metrics: ApiMetrics, type_name: str, command_type: type[Event]
) -> Any:
    max_wait = runtime.settings.max_wait

    async def post_command(**params: Any) -> Response:
        started = time.perf_counter()
        wait: float = params["wait"]
        try:
            return await _post(runtime, metrics, params["command"], wait, params)
        finally:
            metrics.command_seconds.labels(runtime.name, type_name, str(wait > 0).lower()).observe(
                time.perf_counter() - started
            )

    return with_signature(
        post_command,
        [
            parameter("command", Annotated[command_type, Body()]),
            parameter(
                "wait",
                Annotated[
                    float,
                    Query(
                        ge=0,
                        le=max_wait,
                        description="Seconds to wait for the outcome (200) before answering "
                        f"202; at most {max_wait:g}",
                    ),
                ],
                0.0,
            ),
            parameter(
                "idempotency_key",
                Annotated[
                    str | None,
                    Header(
                        alias="Idempotency-Key",
                        pattern=IDEMPOTENCY_KEY,
                        description="Your request id: a retry with the same key is not "
                        "appended again and gets the same request id",
                    ),
                ],
                None,
            ),
            parameter(
                "traceparent",
                Annotated[str | None, Header(description="W3C trace context, passed on")],
                None,
            ),
        ],
    )


async def _post(
    runtime: ServiceRuntime,
    metrics: ApiMetrics,
    command: Event,
    wait: float,
    params: dict[str, Any],
) -> Response:
    # a NUL would fail the command's commit on PostgreSQL, a surrogate or NaN its JSON
    check_document(command.model_dump(by_alias=True), ("body",))
    await runtime.open()
    key: str | None = params["idempotency_key"]
    request_id = new_event_id() if key is None else keyed_request_id(runtime.name, key)
    print_ = fingerprint(command)
    claim: Claim | None = None
    if key is not None:
        claim = await runtime.claim(request_id, print_)
        if not claim.granted:
            existing = claim.entry
            if existing.fingerprint != print_:
                # 422 as the IETF Idempotency-Key draft asks, shaped like any validation error
                raise RequestValidationError(
                    [
                        {
                            "type": "idempotency_key_reused",
                            "loc": ("header", "Idempotency-Key"),
                            "msg": f"Idempotency-Key {key!r} was used for a different "
                            "command; send a new key for a new command",
                            "input": key,
                        }
                    ]
                )
            if existing.position is None:  # claim() waits until the first request appended
                raise KeyInUseError(f"Idempotency-Key {key!r} is still being accepted")
            metrics.commands.labels(runtime.name, command.event_type, "replayed").inc()
            outcome = None
            if wait > 0:
                outcome = await runtime.watcher.outcome(request_id, wait)
            return _answer(runtime, metrics, request_id, existing.position, outcome, wait)
    traceparent = params["traceparent"]
    if traceparent is not None and not _TRACEPARENT.match(traceparent):
        traceparent = None  # W3C: an invalid traceparent is ignored, not an error
    # the default source, loglane's own, under which workers record the request's outcome
    _, message = command_message(
        runtime.service, command, request_id=request_id, traceparent=traceparent
    )
    if claim is None:
        accepted = AcceptedCommand(
            request_id=request_id, fingerprint=print_, position=None, accepted_at=time.time()
        )
    else:
        accepted = claim.entry  # ours, its accepted_at the claim's owner token
    with runtime.watcher.request(request_id) as future:
        # shielded: once the append starts, a client hanging up must not leave the command
        # appended but unrecorded, or its claim released while the append goes through
        position = await asyncio.shield(
            _accept(runtime, accepted, message, claimed=claim is not None)
        )
        metrics.commands.labels(runtime.name, command.event_type, "accepted").inc()
        outcome = future.result() if wait > 0 and await settled(future, wait) else None
    return _answer(runtime, metrics, request_id, position, outcome, wait)


def keyed_request_id(service: str, key: str) -> str:
    """The request id of a POST to `service` with `Idempotency-Key: key` (a UUIDv5)."""
    return str(uuid.uuid5(KEYED_REQUEST_NAMESPACE, f"{service}:{key}"))


async def _accept(
    runtime: ServiceRuntime, accepted: AcceptedCommand, message: Any, *, claimed: bool
) -> Position:
    """Append the command; the position its request is answered with (see record_accepted)."""
    try:
        position = await runtime.appender.submit(message)
    except Exception:
        if claimed:
            await runtime.release(accepted)
        raise
    return await runtime.record_accepted(replace(accepted, position=position))


def _answer(
    runtime: ServiceRuntime,
    metrics: ApiMetrics,
    request_id: str,
    position: Position,
    outcome: RequestOutcome | None,
    wait: float,
) -> Response:
    token = encode_position(position)
    if outcome is None:
        if wait > 0:
            metrics.waits.labels(runtime.name, "timeout").inc()
        body = CommandAccepted(request_id=request_id, position=token)
        return JSONResponse(body.model_dump(mode="json"), status_code=202)
    metrics.waits.labels(runtime.name, outcome.status.value).inc()
    return JSONResponse(request_state(outcome, token).model_dump(mode="json"), status_code=200)


def request_state(outcome: RequestOutcome, position: str | None) -> RequestState:
    return RequestState(
        request_id=outcome.request_id,
        status=outcome.status,
        position=position,
        detail=outcome.detail,
        events=[output_event(message) for message in outcome.events],
    )
