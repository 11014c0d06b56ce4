"""Serving an app on uvicorn from the command line: `loglane api` and `loglane run`.

uvicorn runs in the calling (main) thread, so it owns SIGINT and SIGTERM and shuts down
gracefully; workers run beside it in threads, hooked to the app so that waiting requests
are answered as soon as a batch commits.

Slow and silent clients are cut off: a request must arrive in full, headers and body, within
`read_timeout` seconds of its first byte (or of the connection opening), else the server
answers 408 and closes the connection; a connection idle between requests is closed after
`idle_timeout` seconds. uvicorn has the second but not the first: without it, a client that
sends its headers and then a byte now and then holds a connection, and a task, forever.
Handling time does not count: a request that waits (`?wait=`) for its answer keeps waiting.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from loglane.errors import ConfigurationError

READ_TIMEOUT = 30.0
"""Seconds a request may take to arrive in full, headers and body."""
IDLE_TIMEOUT = 30
"""Seconds a connection may stay idle between requests."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port`; `ConfigurationError` in one line if that fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        # listening now, before the app starts: a client that connects as soon as the URL is
        # printed waits in the backlog instead of being refused
        sock.listen(2048)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --host "
            "or --port"
        ) from None
    return sock


def stop_on_signals(stop: threading.Event) -> None:
    """Make SIGINT and SIGTERM set `stop`; call before starting anything that must be
    stopped cleanly.

    uvicorn installs its own handlers while it serves, shuts down gracefully on a signal,
    then raises the signal again with the handlers it found: these, so that the second
    delivery sets `stop` instead of killing the process before its cleanup runs.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())


def serve(
    app: FastAPI,
    sock: socket.socket,
    stop: threading.Event,
    *,
    read_timeout: float = READ_TIMEOUT,
    idle_timeout: int = IDLE_TIMEOUT,
) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM, or until `stop` is set; cut off
    clients that take longer than `read_timeout` to send a request or stay idle longer than
    `idle_timeout` between requests."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            http=with_read_deadline(read_timeout),
            ws="none",
            timeout_keep_alive=idle_timeout,
        )
    )
    threading.Thread(
        target=_exit_when_set, args=(stop, server), name="api-stopper", daemon=True
    ).start()
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()


def _exit_when_set(stop: threading.Event, server: uvicorn.Server) -> None:
    stop.wait()
    server.should_exit = True


def with_read_deadline(read_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with a deadline for
    reading each request."""
    if read_timeout <= 0:
        raise ConfigurationError("read_timeout must be a positive number of seconds")
    return type(
        "ReadDeadlineProtocol",
        (_ReadDeadline, AutoHTTPProtocol),
        {"read_timeout": read_timeout},
    )


_TIMEOUT_BODY = b"the request took too long to arrive\n"
_REQUEST_TIMEOUT = b"".join(
    (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_TIMEOUT_BODY),
        _TIMEOUT_BODY,
    )
)


class _ReadDeadline(asyncio.Protocol):
    """Mixed into uvicorn's HTTP protocols (which share these attributes and hooks): the
    deadline starts when the connection opens or the next request's first bytes come, and
    ends once the response to that request is complete. When it passes, a request that has
    not fully arrived is answered 408 and its connection closed."""

    read_timeout: float
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any  # uvicorn's RequestResponseCycle of the latest request, or None
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None:
            self._arm()
        super().data_received(data)

    def on_response_complete(self) -> None:
        cast(Any, super()).on_response_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.read_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            return  # the request is in; its handling may take as long as it takes
        if self.transport.is_closing():
            return
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
