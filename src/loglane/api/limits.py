"""413 for request bodies over the configured size, before they are read into memory."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Refuses bodies larger than `max_bytes`: at once when Content-Length says so, and
    while streaming when it does not (chunked uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse()(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # an HTTPException passes FastAPI's body reader untouched and is answered
                # by the app's handler, like the Content-Length case above
                raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _refuse(self) -> JSONResponse:
        return JSONResponse({"detail": self._detail()}, status_code=413)

    def _detail(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes; send less"
