"""How errors become HTTP answers: a status that says whose fault it is, and a detail.

BackendUnavailableError, ConfigurationError, other LoglaneError,
sqlite3.OperationalError                      503 the log or store cannot serve now
KeyInUseError                                 409 the same Idempotency-Key is in flight
HTTPException                                 its own status, JSON detail
RequestValidationError                        422 with pydantic's detail, as FastAPI gives
                                              it, with inputs JSON cannot hold made text
"""

from __future__ import annotations

import logging
import math
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
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

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # FastAPI's own handler echoes each error's input, and fails (a 500) on one that
        # JSON cannot hold: NaN, Infinity, a lone surrogate, bytes that are not UTF-8
        return JSONResponse({"detail": jsonable_encoder(printable(exc.errors()))}, 422)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(KeyInUseError, key_in_use)
    app.add_exception_handler(LoglaneError, unavailable)
    app.add_exception_handler(sqlite3.OperationalError, database_failed)
    app.add_exception_handler(HTTPException, http_error)


def printable(value: Any) -> Any:
    """`value` with what JSON cannot hold as text: floats that are not finite as `NaN` or
    `Infinity`, lone surrogates and bytes that are not UTF-8 as backslash escapes."""
    if isinstance(value, dict):
        return {printable(key): printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [printable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value
