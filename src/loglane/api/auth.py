"""Optional bearer-token auth: with tokens configured, every route but `/healthz` needs one.

It is ASGI middleware rather than a FastAPI dependency so that nothing slips past it: the
generated routes, `/docs`, `/openapi.json`, `/metrics` and the 404s of unknown paths alike.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz"})
_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_UNAUTHORIZED = "send a valid API token as 'Authorization: Bearer <token>'"


class BearerAuth:
    def __init__(
        self, app: ASGIApp, tokens: Sequence[str], open_paths: Collection[str] = OPEN_PATHS
    ) -> None:
        self.app = app
        self._tokens = [token.encode() for token in tokens]
        self._open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._tokens or scope["path"] in self._open_paths:
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._valid(token.strip().encode()):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": _UNAUTHORIZED},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="loglane"'},
        )
        await response(scope, receive, send)

    def _valid(self, presented: bytes) -> bool:
        # compare with every token, in constant time, so timing tells nothing about them
        matches = [hmac.compare_digest(presented, token) for token in self._tokens]
        return any(matches)


def document_bearer_auth(
    schema: dict[str, Any], open_paths: Collection[str] = OPEN_PATHS
) -> dict[str, Any]:
    """Declare the bearer scheme in an OpenAPI `schema` (so /docs can send a token): every
    operation needs it and documents its 401, but those of `open_paths`, which need none."""
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    components.setdefault("schemas", {}).setdefault(
        "Problem",
        {
            "title": "Problem",
            "type": "object",
            "properties": {"detail": {"title": "Detail", "type": "string"}},
            "required": ["detail"],
        },
    )
    schema["security"] = [{"bearer": []}]
    unauthorized = {
        "description": "No valid API token: " + _UNAUTHORIZED,
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            if path in open_paths:
                operation["security"] = []
            else:
                operation.setdefault("responses", {}).setdefault("401", unauthorized)
    return schema
