"""`/healthz` (the process is up), `/readyz` (log and stores reachable), `/metrics`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from loglane.api.metrics import ApiMetrics
from loglane.api.runtime import ServiceRuntime


def health_router(runtimes: Mapping[str, ServiceRuntime], metrics: ApiMetrics) -> APIRouter:
    router = APIRouter(tags=["operations"])
    readiness = _Readiness(runtimes)

    @router.get("/healthz", summary="Is the process up", operation_id="healthz")
    async def healthz() -> dict[str, str]:
        """Always 200 while the server answers; needs no token."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Can every service reach its log and store",
        operation_id="readyz",
        responses={503: {"description": "Some service cannot reach its log or store"}},
    )
    async def readyz() -> JSONResponse:
        """200 when every service's log and store answer; 503 naming those that do not."""
        checks = await readiness.check()
        ready = all(result == "ok" for result in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "services": checks},
            status_code=200 if ready else 503,
        )

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        operation_id="metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router


class _Readiness:
    """Each service's check of its log and store, bounded in time: a check still running
    after `patience` seconds counts as not ready, and the next probe waits for that same
    check instead of starting another (a backend that hangs must not pile up threads)."""

    def __init__(self, runtimes: Mapping[str, ServiceRuntime], patience: float = 0.8) -> None:
        self._runtimes = runtimes
        self._patience = patience
        self._running: dict[str, asyncio.Task[str]] = {}

    async def check(self) -> dict[str, str]:
        for name, runtime in self._runtimes.items():
            if name not in self._running or self._running[name].done():
                self._running[name] = asyncio.ensure_future(_check(runtime))
        await asyncio.wait(self._running.values(), timeout=self._patience)
        return {name: self._result(task) for name, task in self._running.items()}

    def _result(self, task: asyncio.Task[str]) -> str:
        if task.done():
            return task.result()
        return f"no answer from its log or store within {self._patience} s"


async def _check(runtime: ServiceRuntime) -> str:
    try:
        await runtime.open()
        await runtime.call(runtime.log.offsets, runtime.service.input_topic)
        await runtime.call(runtime.store.positions, runtime.name)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"
