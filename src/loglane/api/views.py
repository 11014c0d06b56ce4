"""`GET /<service>/views/<view>/<key>` and `GET /<service>/views/<view>?field=…`: view reads.

Filters exist only for the view's declared indexed fields (each one is an indexed column,
so every filter is an index lookup); pages are in key order and the cursor is the last key
of a page, so paging is stable while rows change. `?position=` (a token from a POST)
makes the read wait until the service's workers applied that position: read-your-writes.

A stored row is upcast to the view's current model as it is read; one that still does not
validate is a 503 whose detail says why and that the view needs rebuilding, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, create_model

from loglane.api.models import Problem
from loglane.api.positions import BadPositionError, decode_position
from loglane.api.runtime import ServiceRuntime
from loglane.api.signatures import parameter, with_signature
from loglane.api.storable import check, flaw
from loglane.errors import ConfigurationError, UnreadableRowError
from loglane.records import TopicPartition
from loglane.views import Key, View

_PAGE_PARAMETERS = ("limit", "cursor", "position")

_TOKEN = r"^[A-Za-z0-9_-]+$"
_POSITION = Query(
    max_length=512,
    pattern=_TOKEN,
    description="A position token from a POST: wait until this view has applied it",
)


def view_router(runtime: ServiceRuntime) -> APIRouter:
    router = APIRouter(tags=[runtime.name])
    for view in runtime.service.views.values():
        _add_get_row(router, runtime, view)
        _add_list_rows(router, runtime, view)

    async def unknown_view(view: str) -> None:
        known = ", ".join(sorted(runtime.service.views)) or "no views"
        raise HTTPException(404, f"{runtime.name} has no view {view!r}; it has {known}")

    async def unknown_view_row(view: str, key: str) -> None:
        await unknown_view(view)

    router.add_api_route("/views/{view}", unknown_view, methods=["GET"], include_in_schema=False)
    router.add_api_route(
        "/views/{view}/{key}", unknown_view_row, methods=["GET"], include_in_schema=False
    )
    return router


def _add_get_row(router: APIRouter, runtime: ServiceRuntime, view: View[Any]) -> None:
    async def get_row(**params: Any) -> Any:
        key: Key = params["key"]
        check(key, ("path", "key"))
        await runtime.open()
        await _reach(runtime, params["position"])
        try:
            row = await runtime.call(runtime.store.get, view, key)
        except UnreadableRowError as exc:
            raise _needs_rebuild(exc) from None
        if row is None:
            raise HTTPException(404, f"{view.name} has no row with {view.key} = {key!r}")
        return row

    router.add_api_route(
        f"/views/{view.name}/{{key}}",
        with_signature(
            get_row,
            [
                parameter("key", Annotated[view.key_kind, Path(description=f"the {view.key}")]),
                parameter("position", Annotated[str | None, _POSITION], None),
            ],
        ),
        methods=["GET"],
        response_model=view.model,
        summary=f"Get one {view.name} row by {view.key}",
        operation_id=f"get_{runtime.name}_{view.name}",
        responses={404: {"model": Problem}, 503: {"model": Problem}},
    )


def _add_list_rows(router: APIRouter, runtime: ServiceRuntime, view: View[Any]) -> None:
    clash = set(view.indexes) & set(_PAGE_PARAMETERS)
    if clash:
        raise ConfigurationError(
            f"view {view.name!r}: indexed field {', '.join(sorted(clash))} clashes with the "
            f"list route's own query parameters ({', '.join(_PAGE_PARAMETERS)}); rename it"
        )
    page_model = create_model(
        f"{_camel(runtime.name)}{_camel(view.name)}Page",
        items=(list[view.model], ...),  # type: ignore[name-defined]
        next_cursor=(str | None, None),
    )
    allowed = {*view.indexes, *_PAGE_PARAMETERS}

    async def list_rows(**params: Any) -> Any:
        request: Request = params["request"]
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            filters = ", ".join(view.indexes) or "none"
            raise _invalid(
                unknown[0],
                f"{view.name} cannot be filtered by {unknown[0]!r}; indexed fields: {filters}",
                request.query_params[unknown[0]],
            )
        where = {
            name: params[f"filter_{name}"]
            for name in view.indexes
            if params[f"filter_{name}"] is not None
        }
        for name, value in where.items():
            check(value, ("query", name))
        after = _decode_cursor(params["cursor"], view) if params["cursor"] else None
        await runtime.open()
        await _reach(runtime, params["position"])
        limit: int = params["limit"]
        try:
            rows = await runtime.call(_query, runtime, view, where, after, limit)
        except UnreadableRowError as exc:
            raise _needs_rebuild(exc) from None
        next_cursor = _encode_cursor(view.key_of(rows[-1])) if len(rows) == limit else None
        return page_model(items=rows, next_cursor=next_cursor)

    filters = [
        parameter(
            f"filter_{column.name}",
            Annotated[column.kind | None, Query(alias=column.name)],
            None,
        )
        for column in view.columns
    ]
    router.add_api_route(
        f"/views/{view.name}",
        with_signature(
            list_rows,
            [
                parameter("request", Request),
                *filters,
                parameter("limit", Annotated[int, Query(ge=1, le=1000)], 100),
                parameter(
                    "cursor",
                    Annotated[
                        str | None,
                        Query(
                            max_length=1024,
                            pattern=_TOKEN,
                            description="next_cursor of the previous page",
                        ),
                    ],
                    None,
                ),
                parameter("position", Annotated[str | None, _POSITION], None),
            ],
        ),
        methods=["GET"],
        response_model=page_model,
        summary=f"List {view.name} rows in {view.key} order"
        + (f", filtered by {', '.join(view.indexes)}" if view.indexes else ""),
        operation_id=f"list_{runtime.name}_{view.name}",
        responses={503: {"model": Problem}},
    )


def _query(
    runtime: ServiceRuntime,
    view: View[Any],
    where: dict[str, Any],
    after: Key | None,
    limit: int,
) -> list[BaseModel]:
    return runtime.store.query(view, where=where, after=after, limit=limit)


async def _reach(runtime: ServiceRuntime, token: str | None) -> None:
    """Wait (bounded) until the service's workers applied the position `token` names."""
    if token is None:
        return
    try:
        position = decode_position(token)
    except BadPositionError as exc:
        raise _invalid("position", str(exc), token) from None
    if position.topic not in runtime.service.topics:
        raise _invalid(
            "position",
            f"this position is in {position.topic}, which {runtime.name} does not consume; "
            "pass it to the views of the service you posted to",
            token,
        )
    offsets = await runtime.call(runtime.log.offsets, position.topic)
    partition = offsets.get(position.partition)
    if partition is None or position.offset >= partition.end:
        raise _invalid("position", "this position is beyond the end of the log", token)
    wait = runtime.settings.read_wait
    reached = await runtime.watcher.reach(
        TopicPartition(position.topic, position.partition), position.offset, wait
    )
    if not reached:
        raise HTTPException(
            503,
            f"{runtime.name} has not applied this position within {wait:g}s; its workers "
            "may be stopped or far behind (see /metrics loglane_partition_lag); retry later",
            headers={"Retry-After": "1"},
        )


def _needs_rebuild(exc: UnreadableRowError) -> HTTPException:
    # Retrying soon does not help: the view must be upcast by new code, or rebuilt.
    return HTTPException(503, str(exc), headers={"Retry-After": "60"})


def _encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, view: View[Any]) -> Key:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        key = None
    # no page ends at a key no store can hold, so such a key is no cursor either
    if type(key) is not view.key_kind or not isinstance(key, str | int) or flaw(key):
        raise _invalid("cursor", "not a cursor; pass the next_cursor of a previous page", cursor)
    return key


def _invalid(name: str, message: str, value: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": message, "input": value}]
    )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
