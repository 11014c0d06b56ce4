"""`GET /<service>/requests/<request_id>`: where a request stands, with its events."""

# No `from __future__ import annotations` here: FastAPI must see the endpoint's annotations
# as objects, and they refer to the service's own `max_wait`, a local name.

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from loglane.api.commands import request_state
from loglane.api.models import Problem, RequestState, request_state_model
from loglane.api.positions import encode_position
from loglane.api.runtime import ServiceRuntime
from loglane.api.storable import check
from loglane.service import Service
from loglane.stores.base import RequestStatus


def request_router(runtime: ServiceRuntime, landscape: Sequence[Service] = ()) -> APIRouter:
    """The route of `runtime`'s requests; `landscape`, the services served beside it, tells
    which events it emits (see `request_state_model`)."""
    router = APIRouter(tags=[runtime.name])
    max_wait = runtime.settings.max_wait
    state_model = request_state_model(runtime.service, landscape)

    @router.get(
        "/requests/{request_id}",
        response_model=None,  # answered as stored; the typed model documents it
        summary="Get a request's status and events",
        operation_id=f"get_{runtime.name}_request",
        responses={
            200: {"model": state_model, "description": "The request's status and events"},
            404: {"model": Problem},
            503: {"model": Problem},
        },
    )
    async def get_request(
        request_id: Annotated[str, Path(max_length=200)],
        wait: Annotated[
            float,
            Query(
                ge=0,
                le=max_wait,
                description=f"Seconds to wait while it is pending; at most {max_wait:g}",
            ),
        ] = 0.0,
    ) -> RequestState:
        """`pending` until a worker handled it, then `done`, `rejected` or `failed`."""
        check(request_id, ("path", "request_id"))
        await runtime.open()
        accepted = await runtime.call(runtime.store.accepted, runtime.name, request_id)
        position = None
        if accepted is not None and accepted.position is not None:
            position = encode_position(accepted.position)
        outcome = await runtime.call(runtime.store.request, runtime.name, request_id)
        if outcome is None and accepted is not None and wait > 0:
            outcome = await runtime.watcher.outcome(request_id, wait)
        if outcome is not None:
            return request_state(outcome, position)
        if accepted is None:
            raise HTTPException(
                404,
                f"{runtime.name} knows no request {request_id!r}: it was never posted here, "
                "or so long ago that it was forgotten",
            )
        return RequestState(request_id=request_id, status=RequestStatus.PENDING, position=position)

    return router
