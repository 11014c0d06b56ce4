"""One SQLite file shared by threads and processes: per-thread connections, WAL, write locks."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loglane.errors import BackendUnavailableError, ConfigurationError


class SQLiteFile:
    """Connections to the database at `path`, one per thread, in WAL mode."""

    def __init__(self, path: Path | str, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ConfigurationError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.connection()
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailableError(
                f"cannot open {self.path}: {exc}; check that its folder is writable"
            ) from exc

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, in autocommit mode (transactions are explicit)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, isolation_level=None, timeout=60.0, check_same_thread=False
            )
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute("PRAGMA cache_size = -65536")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; writers of every process queue on the file's lock."""
        db = self.connection()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise BackendUnavailableError(f"cannot write to {self.path}: {exc}") from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def execute_script(self, statements: str) -> None:
        """Run `;`-separated DDL in one transaction (executescript would commit early)."""
        with self.transaction() as db:
            for statement in statements.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
