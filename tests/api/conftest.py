"""A real uvicorn server on loopback, serving the shop's API on the embedded stack."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from loglane.api import ApiSettings, ApiState, create_app
from loglane.examples.shop import landscape
from loglane.logs.base import Log
from loglane.service import Service
from loglane.stores.base import Batch, Store
from loglane.urls import open_log, open_store
from loglane.worker import Worker

DEADLINE = 60.0


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a thread of this process."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + DEADLINE
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(DEADLINE)
        self._socket.close()

    @property
    def state(self) -> ApiState:
        state: ApiState = self.app.state.loglane
        return state


class WorkerThread:
    """One worker of `service` looping in a thread until stopped."""

    def __init__(self, service: Service, log: Log, store: Store, **options: Any) -> None:
        self.worker = Worker(service, log, store, poll_timeout=0.05, **options)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)


@dataclass
class Stack:
    """The embedded log and SQLite stores in a temporary folder, and what runs on them."""

    folder: Path
    log: Log
    servers: list[LiveServer] = field(default_factory=list)
    workers: list[WorkerThread] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)

    def store(self, name: str) -> Store:
        store = open_store(f"sqlite:///{self.folder}/{{service}}.db", name)
        self.stores.append(store)
        return store

    def serve(self, *, tokens: tuple[str, ...] = (), **settings: Any) -> LiveServer:
        app = create_app(
            landscape,
            self.log,
            lambda name: open_store(f"sqlite:///{self.folder}/{{service}}.db", name),
            tokens=tokens,
            settings=ApiSettings(**settings),
        )
        server = LiveServer(app).start()
        self.servers.append(server)
        return server

    def start_workers(self, on_commit: Callable[[Batch], None] | None = None) -> list[WorkerThread]:
        """One worker per service of the shop; `on_commit` as an API server in-process gets."""
        started = [
            WorkerThread(service, self.log, self.store(service.name), on_commit=on_commit)
            for service in landscape
        ]
        self.workers.extend(started)
        return started

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.stop_workers()
        for store in self.stores:
            store.close()
        self.log.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    log = open_log(f"embedded:///{tmp_path}/log.db?session_timeout=3&synchronous=normal")
    stack = Stack(tmp_path, log)
    yield stack
    stack.close()


@pytest.fixture
def shop(stack: Stack) -> Iterator[httpx.Client]:
    """A client of a server whose workers run in-process, hooked to it."""
    server = stack.serve()
    stack.start_workers(on_commit=server.state.committed)
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        yield client
