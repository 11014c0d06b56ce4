"""The view browser: a service's views, their rows page by page in key order, filtered by
indexed fields, and one row looked up by key, read as the HTTP API reads them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loglane.api.storable import flaw
from loglane.console.context import Console, PageNotFoundError
from loglane.views import Key, View

if TYPE_CHECKING:
    from loglane.api.runtime import ServiceRuntime

PAGE = 25


class BadInputError(ValueError):
    """A key or filter the page cannot use; shown on the page, with a 400."""


def typed(view: View[Any], field: str, kind: type, text: str) -> Any:
    """`text` from a form as the `kind` (str, int, float or bool) of `view`'s `field`."""
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            value: Any = text.lower() in ("true", "1")
        else:
            value = kind(text)
    except ValueError:
        raise BadInputError(
            f"{field} of {view.name} is a {kind.__name__}; {text!r} is not one"
        ) from None
    problem = flaw(value)
    if problem is not None:
        raise BadInputError(f"{field}: the value {problem}")
    return value


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.get("/services/{name}/views")
    async def views(request: Request, name: str) -> Response:
        runtime = console.runtime(name)
        return console.page(request, "views.html", service=runtime.service)

    @routes.get("/services/{name}/views/{view_name}")
    async def rows(request: Request, name: str, view_name: str) -> Response:
        runtime = console.runtime(name)
        view = runtime.service.views.get(view_name)
        if view is None:
            raise PageNotFoundError(
                f"{name} has no view {view_name!r}; it has "
                f"{', '.join(runtime.service.views) or 'none'}"
            )
        await runtime.open()
        params = request.query_params
        filters = {column.name: params.get(column.name, "") for column in view.columns}
        context: dict[str, Any] = {
            "service": runtime.service,
            "view": view,
            "fields": list(view.model.model_fields),
            "filters": filters,
            "key": params.get("key", ""),
            "rows": [],
            "row": None,
            "looked_up": False,
            "next_page": None,
            "problem": None,
        }
        try:
            if context["key"]:
                key = typed(view, view.key, view.key_kind, context["key"])
                context["looked_up"] = True
                context["row"] = await run_in_threadpool(runtime.store.get, view, key)
            else:
                where = {
                    column.name: typed(view, column.name, column.kind, filters[column.name])
                    for column in view.columns
                    if filters[column.name]
                }
                after = params.get("after")
                start: Key | None = None
                if after:
                    start = typed(view, view.key, view.key_kind, after)
                found = await run_in_threadpool(_page, runtime, view, where, start)
                context["rows"] = found
                if len(found) == PAGE:
                    following = {k: v for k, v in filters.items() if v}
                    following["after"] = str(view.key_of(found[-1]))
                    context["next_page"] = "?" + urlencode(following)
        except BadInputError as exc:
            context["problem"] = str(exc)
            return console.page(request, "rows.html", 400, **context)
        return console.page(request, "rows.html", **context)

    return routes


def _page(
    runtime: ServiceRuntime, view: View[Any], where: dict[str, Any], after: Key | None
) -> list[BaseModel]:
    return runtime.store.query(view, where=where, after=after, limit=PAGE)
