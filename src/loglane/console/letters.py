"""placeholder"""

from __future__ import annotations

from fastapi import APIRouter

from loglane.console.context import Console


def router(console: Console) -> APIRouter:
    return APIRouter(include_in_schema=False)
