"""Worker and API processes for tests: started with the real CLI, killed for real."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from loglane.errors import ConfigurationError
from loglane.logs.embedded import EmbeddedLog
from loglane.records import TopicPartition
from loglane.stores.base import Store
from loglane.stores.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    """An embedded log and per-service SQLite stores in one folder, by URL."""

    folder: Path
    session_timeout: float = 1.0

    @property
    def log_url(self) -> str:
        return (
            f"embedded:///{self.folder}/log.db?session_timeout={self.session_timeout}"
            "&heartbeat_interval=0.1&synchronous=normal"
        )

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.folder}/{{service}}.db"

    def store(self, service: str) -> Store:
        return SQLiteStore(self.folder / f"{service}.db")

    def log(self) -> EmbeddedLog:
        return EmbeddedLog(self.folder / "log.db")

    def lease_owners(self, group: str) -> dict[str, int]:
        """Live lease owners of `group` and how many partitions each holds."""
        with sqlite3.connect(self.folder / "log.db", timeout=60) as db:
            rows = db.execute(
                "SELECT owner, count(*) FROM leases WHERE grp = ? AND expires_at > ? "
                "GROUP BY owner",
                (group, time.time()),
            ).fetchall()
        return dict(rows)


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a `python -m loglane` child: this one, with ROOT first on PYTHONPATH.

    The caller's PYTHONPATH stays behind ROOT, so a test run on other sources
    (`PYTHONPATH=src pytest`) runs its children on them too.
    """
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


@dataclass(frozen=True)
class ApiProcess:
    """A `loglane api` process that serves: its URL, and the file its output goes to."""

    url: str
    output: Path


@contextmanager
def api_process(folder: Path, *args: str, **env: str) -> Iterator[ApiProcess]:
    """`loglane api ARGS` in a process of its own, on an embedded log and SQLite stores in
    `folder` unless `env` says otherwise; yields once it says where it serves, and
    terminates it after."""
    output = folder / "api.log"
    embedded = {
        "LOGLANE_LOG": f"embedded:///{folder}/log.db",
        "LOGLANE_DB": f"sqlite:///{folder}/{{service}}.db",
    }
    with output.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "loglane", "api", *args],
            cwd=ROOT,
            env=child_environment(**{**embedded, **env}),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield ApiProcess(served_url(output, server), output)
    finally:
        server.terminate()
        server.wait(timeout=60)


def served_url(output: Path, server: subprocess.Popen[bytes], timeout: float = 120.0) -> str:
    """The URL `loglane api` prints once it listens."""
    deadline = time.monotonic() + timeout
    while (found := re.search(r"on (http://\S+) ", output.read_text())) is None:
        assert server.poll() is None, output.read_text()
        assert time.monotonic() < deadline, f"no URL within {timeout}s: {output.read_text()}"
        time.sleep(0.05)
    return found.group(1)


class Stores(Protocol):
    """A stack that opens the store of a service (`Stack`, and the Kafka tests' own)."""

    def store(self, service: str) -> Store: ...


def landscape_progress(stack: Stores, services: Iterable[str]) -> tuple[int, int]:
    """A measure that changes whenever `services` commit or publish: the sum of their stored
    positions, and how many entries wait in their outboxes.

    Pass it to `tests.conftest.while_progressing` to wait for a landscape to drain.
    """
    positions = backlog = 0
    for service in services:
        store = stack.store(service)
        try:
            positions += sum(store.positions(service).values())
            backlog += sum(store.outbox_backlog(service).values())
        finally:
            store.close()
    return positions, backlog


class WorkerProcess:
    """`python -m loglane <args>` in a child process, output kept in a file."""

    def __init__(
        self, stack: Stack, *args: str, name: str = "worker", env: dict[str, str] | None = None
    ) -> None:
        """`env` replaces the child's environment (default: `child_environment()`)."""
        self.output = stack.folder / f"{name}-{time.monotonic_ns()}.log"
        env = child_environment() if env is None else env
        with self.output.open("w") as sink:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "loglane",
                    *args,
                    "--log",
                    stack.log_url,
                    "--db",
                    stack.db_url,
                ],
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)

    def wait_started(self, timeout: float = 120.0) -> None:
        """Wait until the process took its partitions: only then does SIGTERM stop it cleanly
        (a signal that comes while it still imports ends it as the signal's default does)."""
        deadline = time.monotonic() + timeout
        while "assigned" not in self.output.read_text():
            assert self.process.poll() is None, self.describe()
            assert time.monotonic() < deadline, f"not started within {timeout}s"
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM and wait: a clean shutdown exits 0."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def describe(self) -> str:
        return self.output.read_text()[-4000:]


@dataclass
class PositionWatch:
    """Samples stored positions and committed offsets in the background.

    It records every time a stored position moves backwards, or the log's committed offset
    runs ahead of the stored position (the log must trail the store).
    """

    stack: Stack
    services: list[str]
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stores = {name: self.stack.store(name) for name in self.services}
        log = self.stack.log()
        highest: dict[tuple[str, TopicPartition], int] = {}
        while not self._stop.wait(0.02):
            for name, store in stores.items():
                # committed offsets first: a commit after this read cannot pass the stored
                # position read next, since the worker commits the log after the store
                committed = {
                    TopicPartition(topic, p): offset
                    for topic in (f"{name}.in", "ledger.out")
                    for p, offset in self._committed(log, name, topic).items()
                }
                stored = store.positions(name)
                for tp, offset in stored.items():
                    if offset < highest.get((name, tp), 0):
                        self.violations.append(f"{name} {tp} moved back to {offset}")
                    highest[name, tp] = max(offset, highest.get((name, tp), 0))
                for tp, offset in committed.items():
                    if offset > stored.get(tp, 0):
                        self.violations.append(f"{name} {tp} committed {offset} > stored")
            self.samples += 1
        for store in stores.values():
            store.close()
        log.close()

    @staticmethod
    def _committed(log: EmbeddedLog, group: str, topic: str) -> dict[int, int]:
        try:
            return log.committed(group, topic)
        except ConfigurationError:  # the topic may not exist yet in the first samples
            return {}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
