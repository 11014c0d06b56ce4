"""`/asyncapi.json`: the AsyncAPI 3.0 document of the services this server serves."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from fastapi import APIRouter

from loglane.asyncapi import asyncapi_document
from loglane.service import Service


def asyncapi_router(services: Sequence[Service]) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @cache
    def document() -> dict[str, Any]:
        return asyncapi_document(services)

    @router.get(
        "/asyncapi.json",
        summary="The AsyncAPI 3.0 document of the services' topics",
        operation_id="asyncapi",
    )
    async def asyncapi() -> dict[str, Any]:
        """Channels (each service's input, output and DLQ topics), the messages on them
        with their JSON schemas and CloudEvents headers, and what each service receives
        and sends."""
        return document()

    return router
