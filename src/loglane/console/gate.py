"""How a browser gets past the API's bearer-token auth: a login page and a session cookie.

A browser cannot send `Authorization: Bearer` when it navigates, so with tokens configured
the console offers `/ui/login`: the operator types one of the API's tokens, and the server
sets the cookie `loglane_console` (HttpOnly, SameSite=Strict) to a digest of that token, not
the token itself. `ConsoleGate` runs before `BearerAuth` and, for a request that carries no
Authorization header but a cookie matching a token, adds that token's header, so the same
check guards every route and the console's `fetch()` calls to the API work too. `/ui?token=…`
logs in the same way in one step (the token then shows in the browser's history: prefer the
form). A cookie-authenticated request that changes something (not GET/HEAD) must come from
the console's own origin (its `Origin` header, else `Sec-Fetch-Site: same-origin`), so another
site cannot make a logged-in browser post commands or drop dead letters.

Without tokens the gate only serves the login page (which then sends you on to the console)
and the static files.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import parse_qs, urlencode

from starlette.datastructures import URL, Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from loglane.console.context import HERE, PREFIX, Console

COOKIE = "loglane_console"
LOGIN = f"{PREFIX}/login"
LOGOUT = f"{PREFIX}/logout"
STATIC = f"{PREFIX}/static"
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_MAX_FORM_BYTES = 16_384


def session_value(token: str) -> str:
    """The cookie's value for `token`: a keyed digest, so the cookie jar never holds a token."""
    return hmac.new(token.encode(), b"loglane console session", hashlib.sha256).hexdigest()


class ConsoleGate:
    """ASGI middleware outside `BearerAuth`: login, logout and static files, and the cookie
    turned into the bearer header that `BearerAuth` checks."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str], console: Console) -> None:
        self.app = app
        self._sessions = {session_value(token): token for token in tokens}
        self._console = console
        self._public = Router(
            routes=[
                Route(LOGIN, self._login, methods=["GET", "POST"]),
                Route(LOGOUT, self._logout, methods=["GET", "POST"]),
                Mount(STATIC, StaticFiles(directory=HERE / "static"), name="static"),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in (LOGIN, LOGOUT) or path.startswith(STATIC + "/"):
            await self._public(scope, receive, send)
            return
        if not self._sessions:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if "authorization" not in headers:
            token = self._session_token(headers)
            if token is not None:
                if scope["method"] not in _SAFE_METHODS and not _same_origin(headers):
                    response: Response = JSONResponse(
                        {
                            "detail": "a cross-site request cannot use the console's login; "
                            "send 'Authorization: Bearer <token>' instead"
                        },
                        status_code=403,
                    )
                    await response(scope, receive, send)
                    return
                scope = {
                    **scope,
                    "headers": [*scope["headers"], (b"authorization", f"Bearer {token}".encode())],
                }
            elif _is_console_page(path, scope["method"]):
                response = self._enter(Request(scope))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _session_token(self, headers: Headers) -> str | None:
        presented = cookie_parser(headers.get("cookie", "")).get(COOKIE)
        if presented is None:
            return None
        for value, token in self._sessions.items():
            if hmac.compare_digest(presented.encode(), value.encode()):
                return token
        return None

    def _enter(self, request: Request) -> Response:
        """A console page without a session: log in with `?token=`, or go to the login page."""
        given = request.query_params.get("token")
        if given is not None and self._token(given) is not None:
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            return self._logged_in(request, given, target)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{LOGIN}?{urlencode({'next': target})}", status_code=303)

    def _token(self, given: str) -> str | None:
        return self._sessions.get(session_value(given))

    async def _login(self, request: Request) -> Response:
        target = _local(request.query_params.get("next", PREFIX))
        if not self._sessions:
            return RedirectResponse(target, status_code=303)
        if request.method == "GET":
            return self._login_page(request, target)
        body = await request.body()
        if len(body) > _MAX_FORM_BYTES:
            return self._login_page(request, target, "that form is too large", 413)
        form = parse_qs(body.decode(errors="replace"))
        given = (form.get("token") or [""])[0].strip()
        if not given or self._token(given) is None:
            return self._login_page(request, target, "that is not one of this server's tokens", 401)
        return self._logged_in(request, given, target)

    def _login_page(
        self, request: Request, target: str, error: str | None = None, status_code: int = 200
    ) -> Response:
        return self._console.page(
            request, "login.html", status_code, next=target, error=error, services=[]
        )

    def _logged_in(self, request: Request, token: str, target: str) -> Response:
        response = RedirectResponse(_local(target), status_code=303)
        response.set_cookie(
            COOKIE,
            session_value(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def _logout(self, request: Request) -> Response:
        response = RedirectResponse(LOGIN if self._sessions else PREFIX, status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response


def _is_console_page(path: str, method: str) -> bool:
    return method in _SAFE_METHODS and (path == PREFIX or path.startswith(PREFIX + "/"))


def _local(target: str) -> str:
    """`target` if it is a path of this console, else the console's start: a login link must
    not send anyone to another site."""
    url = URL(target)
    if url.scheme or url.netloc or not (target == PREFIX or target.startswith(PREFIX + "/")):
        return PREFIX
    return target


def _same_origin(headers: Headers) -> bool:
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "")
        return origin in (f"http://{host}", f"https://{host}")
    return headers.get("sec-fetch-site") == "same-origin"
