"""How errors become HTTP answers: a status that says whose fault it is, and a detail.

BackendUnavailableError, ConfigurationError, other LoglaneError,
sqlite3.OperationalError                      503 the log or store cannot serve now
KeyInUseError                                 409 the same Idempotency-Key is in flight
HTTPException                                 its own status, JSON detail
RequestValidationError                        422 with pydantic's detail (FastAPI's own)
"""

from __future__ import annotations

import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from loglane.api.runtime import KeyInUseError
from loglane.errors import LoglaneError

logger = logging.getLogger("loglane.api")


def install_error_handlers(app: FastAPI, services: list[str]) -> None:
    async def key_in_use(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409, headers={"Retry-After": "1"})

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": f"{exc}; the request may be retried"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    async def database_failed(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": f"the database failed ({exc}); the request may be retried"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = (
                f"no route {request.method} {request.url.path}; services: "
                f"{', '.join(f'/{name}' for name in services)}; see /docs"
            )
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(KeyInUseError, key_in_use)
    app.add_exception_handler(LoglaneError, unavailable)
    app.add_exception_handler(sqlite3.OperationalError, database_failed)
    app.add_exception_handler(HTTPException, http_error)
