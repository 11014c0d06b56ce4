"""PostgreSQL for the tests: the server `LOGLANE_PG` names, or the one scripts/postgres starts.

Each test works in schemas of its own (a unique prefix), dropped when it ends, so tests and
concurrent test runs share one server without seeing each other's tables.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from loglane.stores.postgres import PostgresStore
from tests.processes import Stack

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "postgres"


@contextmanager
def session_server(say: Callable[[str], None]) -> Iterator[str]:
    """The URL of the tests' server: LOGLANE_PG's, or one scripts/postgres starts and, at the
    end, stops. A server that already ran is used as it is and left running."""
    given = os.environ.get("LOGLANE_PG")
    if given:
        yield given
        return
    if _is_running():
        url = _script("url")
        say(f"PostgreSQL: using the server already running at {url}")
        yield url
        return
    say("PostgreSQL: starting a server (scripts/postgres start) ...")
    started = time.monotonic()
    url = _script("start")
    say(f"PostgreSQL: {url} ready in {time.monotonic() - started:.1f} s")
    try:
        yield url
    finally:
        _script("stop")
        say("PostgreSQL: stopped the server this session started")


def _is_running() -> bool:
    status = subprocess.run([str(SCRIPT), "status"], capture_output=True, check=False)
    return status.returncode == 0


def _script(command: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(SCRIPT), command],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/postgres {command} failed:\n{result.stderr}")
    return result.stdout.strip()


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


def drop_schemas(url: str, prefix: str) -> None:
    """Drop every schema whose name starts with `prefix`."""
    with psycopg.connect(url, autocommit=True) as conn:
        names = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,)
        ).fetchall()
        for (name,) in names:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@contextmanager
def schemas(url: str) -> Iterator[str]:
    """A schema prefix of one's own, its schemas dropped afterwards."""
    prefix = unique_prefix()
    try:
        yield prefix
    finally:
        drop_schemas(url, prefix)


def with_schema(url: str, schema: str) -> str:
    """`url` with Loglane's `schema` option added."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


@dataclass(kw_only=True)
class PostgresStack(Stack):
    """The crash tests' stack with PostgreSQL stores: one schema per service, under a prefix."""

    url: str
    prefix: str = field(default_factory=unique_prefix)

    @property
    def db_url(self) -> str:
        return with_schema(self.url, self.prefix + "{service}")

    def store(self, service: str) -> PostgresStore:
        return PostgresStore(self.url, schema=self.prefix + "{service}")


class PrivateServer:
    """A PostgreSQL cluster of one test's own, on a free port, which it may stop and start."""

    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="loglane-pg-"))
        self._folder.chmod(0o755)  # the server runs as `postgres` when the tests run as root
        # the script creates the data directory's parent for the server user; it must not exist
        self._env = {
            "LOGLANE_PG_PORT": str(_free_port()),
            "LOGLANE_PG_DATA": str(self._folder / "cluster" / "data"),
        }
        self.url = self.start()

    def start(self) -> str:
        return _script("start", self._env)

    def stop(self) -> None:
        _script("stop", self._env)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
