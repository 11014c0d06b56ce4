"""`/healthz`, `/readyz` and `/metrics` of a process that runs workers without the HTTP API
(`loglane worker --probe-port`), on a small threaded WSGI server of the standard library.

    /healthz    200 while the process answers
    /readyz     200 while every worker runs its passes; 503 naming those that do not
                (starting, stopped, or retrying a backend that fails), from memory: it
                answers at once while a backend is down
    /metrics    the workers' metrics (`loglane.metrics`), the services' progress included
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from loglane.metrics import REGISTRY, Forwarded, OwnConnections, ProgressSampler
from loglane.runner import WorkerThreads
from loglane.urls import open_log, open_store

logger = logging.getLogger("loglane.probes")

StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes come every few seconds
        pass


class Probes:
    """The probe endpoints on `host:port` (port 0: any free one), served on a thread."""

    def __init__(
        self,
        readiness: Callable[[], dict[str, str]],
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._readiness = readiness
        self._host = host
        self._metrics = make_wsgi_app(registry)
        self._server = make_server(
            host, port, self._app, server_class=_Server, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="probes", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}"

    def start(self) -> Probes:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            workers = self._readiness()
            ready = bool(workers) and all(state == "ok" for state in workers.values())
            body = {"status": "ready" if ready else "unavailable", "workers": workers}
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable", body)
        return _json(
            start_response,
            "404 Not Found",
            {"detail": f"no such probe {path!r}; try /healthz, /readyz or /metrics"},
        )


def serve_probes(threads: WorkerThreads, *, host: str, port: int) -> tuple[Probes, ProgressSampler]:
    """Serve the probes of `threads` (their services' progress measured on connections of
    its own); close both when the workers stop."""
    connections = OwnConnections(
        threads.services,
        lambda: open_log(threads.log_url),
        lambda name: open_store(threads.db_url, name),
    )
    progress = ProgressSampler(connections, on_close=connections.close)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(Forwarded(REGISTRY))
    registry.register(progress)
    return Probes(threads.readiness, registry, host=host, port=port).start(), progress


def _json(start_response: StartResponse, status: str, body: object) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
