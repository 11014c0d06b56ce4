"""Serving an app on uvicorn from the command line: `loglane api` and `loglane run`.

uvicorn runs in the calling (main) thread, so it owns SIGINT and SIGTERM and shuts down
gracefully; workers run beside it in threads, hooked to the app so that waiting requests
are answered as soon as a batch commits.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

import uvicorn
from fastapi import FastAPI

from loglane.errors import ConfigurationError

TOKENS_ENV = "LOGLANE_API_TOKENS"


def api_tokens(given: list[str] | None) -> list[str]:
    """The tokens from `--api-token` options, else from `LOGLANE_API_TOKENS` (comma-separated)."""
    if given:
        return [token.strip() for token in given if token.strip()]
    return [token.strip() for token in os.environ.get(TOKENS_ENV, "").split(",") if token.strip()]


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port`; `ConfigurationError` in one line if that fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
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


def serve(app: FastAPI, sock: socket.socket, stop: threading.Event) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM, or until `stop` is set."""
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_keep_alive=30)
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


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
