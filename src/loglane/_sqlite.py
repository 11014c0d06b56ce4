"""One SQLite file shared by threads and processes: per-thread connections, WAL, write locks,
and commits that a thread of the file's own makes while the writer goes on."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

from loglane.errors import BackendUnavailableError, ConfigurationError

_WRITE_LOCKS: dict[Path, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()
_WRITE_WAIT_SECONDS = 60.0


def _write_lock(path: Path) -> threading.Lock:
    """One lock per database file and process, taken around every write transaction.

    Writers of one process (worker threads, the HTTP API's thread pool) then queue on it and
    each starts the moment the previous one commits. Left to SQLite alone they would collide
    on the file lock and back off in its busy handler, sleeping up to 100 ms a retry: a
    convoy that cost `loglane run` most of its throughput and all of its tail latency.
    Writers in other processes still meet on SQLite's own lock.

    Not reentrant: a thread that began a write on a file cannot begin another on it (SQLite
    would refuse it too), and a commit sent ahead is ended, and the lock released, by the
    file's committer thread.
    """
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(path.resolve(), threading.Lock())


class SQLiteFile:
    """Connections to the database at `path`, one per thread, in WAL mode."""

    def __init__(self, path: Path | str, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ConfigurationError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._connections: dict[int, sqlite3.Connection] = {}
        self._lock = threading.Lock()
        self._write_lock = _write_lock(self.path)
        self._committer: ThreadPoolExecutor | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.connection()
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailableError(
                f"cannot open {self.path}: {exc}; check that its folder is writable"
            ) from exc

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, in autocommit mode (transactions are explicit); once
        the commit this thread sent ahead on it, if any, has ended."""
        sending: Future[None] | None = getattr(self._local, "sending", None)
        if sending is not None:
            concurrent.futures.wait([sending])  # its outcome is for whoever sent it
            self._local.sending = None
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, isolation_level=None, timeout=60.0, check_same_thread=False
            )
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute("PRAGMA cache_size = -8192")  # 8 MiB a connection; the OS caches the file
            self._local.db = db
            with self._lock:
                self._close_connections_of_ended_threads()
                self._connections[threading.get_ident()] = db
        return db

    def _close_connections_of_ended_threads(self) -> None:
        # Threads come and go (the HTTP API's pool ends idle ones); their connections would
        # otherwise stay open, with their caches, until the file is closed.
        alive = {thread.ident for thread in threading.enumerate()}
        for ident in [ident for ident in self._connections if ident not in alive]:
            self._connections.pop(ident).close()

    @contextmanager
    def transaction(
        self, *, sent: Callable[[Future[None]], None] | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction; writers of every process queue on the file's lock.

        With `sent`, a block that ends normally does not wait for its commit: the file's
        committer thread makes it (an fsync, with `synchronous=FULL`, during which it does
        not hold the GIL), and releases the lock; `sent` receives the commit's future, which
        raises SQLite's error if the commit failed (the transaction is then rolled back).
        The thread's connection waits for it before its next use.
        """
        db = self.connection()
        if not self._write_lock.acquire(timeout=_WRITE_WAIT_SECONDS):
            raise BackendUnavailableError(
                f"cannot write to {self.path}: another thread held it for {_WRITE_WAIT_SECONDS}s"
            )
        committing = False
        try:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise BackendUnavailableError(f"cannot write to {self.path}: {exc}") from exc
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if sent is None:
                db.execute("COMMIT")
            else:
                future = self._committer_thread().submit(self._commit, db)
                committing = True  # the committer releases the lock
                self._local.sending = future
                sent(future)
        finally:
            if not committing:
                self._write_lock.release()

    def _committer_thread(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._committer is None:
                self._committer = ThreadPoolExecutor(1, f"loglane-commit-{self.path.name}")
            return self._committer

    def _commit(self, db: sqlite3.Connection) -> None:
        """On the committer thread: commit the transaction `db` holds, then let the next
        writer in."""
        try:
            db.execute("COMMIT")
        except sqlite3.Error:
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        finally:
            self._write_lock.release()

    def execute_script(self, statements: str) -> None:
        """Run `;`-separated DDL in one transaction (executescript would commit early)."""
        with self.transaction() as db:
            for statement in statements.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        with self._lock:
            committer, self._committer = self._committer, None
        if committer is not None:
            committer.shutdown()  # a commit under way ends first
        with self._lock:
            for db in self._connections.values():
                db.close()
            self._connections.clear()
        self._local = threading.local()
