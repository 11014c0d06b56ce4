"""The dead-letter pages: a service's pending dead letters, one letter in full (the error with
its traceback, the headers, the payload), and re-driving or dropping them.

The actions are POSTed forms that redirect back (post/redirect/get), so a reload does not
repeat them; `loglane.dlq` refuses to handle one letter twice either way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from loglane import dlq
from loglane.console.context import PREFIX, Console, PageNotFoundError

if TYPE_CHECKING:
    from loglane.api.runtime import ServiceRuntime


def _filter(request: Request) -> dlq.LetterFilter | None:
    given = {name: request.query_params.get(name) or None for name in ("type", "key", "error")}
    return dlq.LetterFilter(**given) if any(given.values()) else None


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    async def opened(name: str) -> ServiceRuntime:
        runtime = console.runtime(name)
        await runtime.open()
        return runtime

    @routes.get("/services/{name}/dlq")
    async def letters(request: Request, name: str) -> Response:
        runtime = await opened(name)
        where = _filter(request)
        handled = request.query_params.get("handled") == "1"
        found = await run_in_threadpool(
            lambda: dlq.list_letters(
                runtime.log, runtime.service, runtime.store, where=where, include_handled=handled
            )
        )
        return console.page(
            request,
            "letters.html",
            service=runtime.service,
            letters=found,
            where=where or dlq.LetterFilter(),
            handled=handled,
            done=request.query_params.get("done"),
        )

    @routes.get("/services/{name}/dlq/{letter_id}")
    async def letter(request: Request, name: str, letter_id: str) -> Response:
        runtime = await opened(name)
        try:
            found = await run_in_threadpool(
                dlq.show, runtime.log, runtime.service, letter_id, runtime.store
            )
        except dlq.UnknownDeadLetterError as exc:
            raise PageNotFoundError(str(exc)) from None
        return console.page(
            request,
            "letter.html",
            service=runtime.service,
            letter=found,
            done=request.query_params.get("done"),
        )

    @routes.post("/services/{name}/dlq/{letter_id}/redrive")
    async def redrive_one(name: str, letter_id: str) -> Response:
        runtime = await opened(name)
        action = partial(dlq.redrive, runtime.log, runtime.store, runtime.service, letter_id)
        return await _act(runtime, letter_id, "re-driven", action)

    @routes.post("/services/{name}/dlq/{letter_id}/drop")
    async def drop_one(name: str, letter_id: str) -> Response:
        runtime = await opened(name)
        action = partial(dlq.drop, runtime.log, runtime.store, runtime.service, letter_id)
        return await _act(runtime, letter_id, "dropped", action)

    @routes.post("/services/{name}/dlq")
    async def redrive_all(request: Request, name: str) -> Response:
        """Re-drive every pending letter that matches the page's filter."""
        runtime = await opened(name)
        where = _filter(request)
        count = await run_in_threadpool(
            lambda: dlq.redrive(runtime.log, runtime.store, runtime.service, where=where)
        )
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "done"]
        query = urlencode([*rest, ("done", f"re-drove {count} dead letters")])
        return RedirectResponse(f"{PREFIX}/services/{name}/dlq?{query}", status_code=303)

    return routes


async def _act(
    runtime: ServiceRuntime, letter_id: str, done: str, action: Callable[[], object]
) -> Response:
    """Run a re-drive or drop, then show the letter again with what became of it."""
    page = f"{PREFIX}/services/{runtime.name}/dlq/{letter_id}"
    try:
        await run_in_threadpool(action)
    except dlq.UnknownDeadLetterError as exc:
        raise PageNotFoundError(str(exc)) from None
    except dlq.DeadLetterHandledError as exc:
        return RedirectResponse(f"{page}?{urlencode({'done': str(exc)})}", status_code=303)
    return RedirectResponse(f"{page}?{urlencode({'done': done})}", status_code=303)
