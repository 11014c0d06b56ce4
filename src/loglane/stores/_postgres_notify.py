"""Commits pushed by PostgreSQL: each commit NOTIFYs `loglane_<service>` with a small payload.

    {"schema": ..., "topic": ..., "partition": ..., "position": ..., "request_ids": [...]}

`CommitListener` receives them on a connection of its own; `ChangeMarker` turns them into the
number that `Store.change_marker()` returns, on a thread, so the HTTP API's waiters learn of
progress without a query per poll.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from loglane.errors import BackendUnavailableError
from loglane.stores._postgres_tables import quote

# NOTIFY payloads must stay under 8000 bytes; past this, request ids are left out.
_NOTIFY_BYTES = 7000


def channel(service: str) -> str:
    """The NOTIFY channel of `service`'s commits."""
    return f"loglane_{service}"


def payload(schema: str, topic: str, partition: int, position: int, request_ids: list[str]) -> str:
    """The NOTIFY payload of a commit, as JSON; request ids only while they fit."""
    notice: dict[str, Any] = {
        "schema": schema,
        "topic": topic,
        "partition": partition,
        "position": position,
        "request_ids": request_ids,
    }
    text = json.dumps(notice)
    if len(text.encode()) > _NOTIFY_BYTES:
        notice["request_ids"] = None
        text = json.dumps(notice)
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitNotice:
    """A batch of `service` committed: `topic`/`partition` now stand at `position`.

    `request_ids` are the requests whose outcome the batch stored, or None when there were
    too many to say: then any pending request of the service may have finished.
    """

    service: str
    topic: str
    partition: int
    position: int
    request_ids: tuple[str, ...] | None


class CommitListener:
    """Commits of the services it follows, pushed by PostgreSQL, on a connection of its own.

        with store.listen("customers") as listener:
            while not done():
                for notice in listener.wait(timeout=1.0):
                    ...   # re-read the request or the position the notice names

    Notices sent while no listener was connected are lost: check the state you wait for once
    after listening starts, then after each notice. When the connection drops, `wait` raises
    `BackendUnavailableError`; open a new listener and check again. Use it from one thread.
    """

    def __init__(self, conninfo: str, schema_of: Callable[[str], str], *, where: str) -> None:
        self._schema_of = schema_of
        self._schemas: set[str] = set()
        self._where = where
        try:
            self._conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc

    def follow(self, *services: str) -> None:
        """Listen to the commits of `services` too."""
        try:
            for service in services:
                self._conn.execute(f"LISTEN {quote(channel(service))}")
                self._schemas.add(self._schema_of(service))
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc

    def wait(self, timeout: float) -> list[CommitNotice]:
        """The notices that arrive within `timeout` seconds, returned as soon as there is one."""
        notices: list[CommitNotice] = []
        try:
            for notify in self._conn.notifies(timeout=timeout, stop_after=1):
                notices.extend(self._read(notify))
            # Take the rest that arrived with the first, without waiting again.
            for notify in self._conn.notifies(timeout=0):
                notices.extend(self._read(notify))
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc
        return notices

    def _read(self, notify: psycopg.Notify) -> list[CommitNotice]:
        try:
            notice = json.loads(notify.payload)
            if notice["schema"] not in self._schemas:
                return []
            request_ids = notice["request_ids"]
            return [
                CommitNotice(
                    service=notify.channel.removeprefix("loglane_"),
                    topic=notice["topic"],
                    partition=notice["partition"],
                    position=notice["position"],
                    request_ids=None if request_ids is None else tuple(request_ids),
                )
            ]
        except (ValueError, KeyError, TypeError):
            return []  # someone else's NOTIFY on the channel: not a commit of ours

    def _unavailable(self, exc: Exception) -> BackendUnavailableError:
        reason = " ".join(str(exc).split())
        return BackendUnavailableError(f"cannot listen on PostgreSQL ({self._where}): {reason}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> CommitListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ChangeMarker:
    """A number that moves when a followed service commits, kept by a listening thread.

    It also moves whenever the thread (re)connects, since notices may have been missed
    meanwhile, and a service followed late is checked once when it is added.
    """

    def __init__(self, listen: Callable[[], CommitListener]) -> None:
        self.value = 0
        self._listen = listen
        self._services: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loglane-pg-marker", daemon=True)
        self._thread.start()

    def follow(self, services: set[str]) -> None:
        if not services <= self._services:
            self._services = self._services | services

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with self._listen() as listener:
                    following: set[str] = set()
                    while not self._stop.is_set():
                        new = self._services - following
                        if new:
                            listener.follow(*new)
                            following |= new
                            self.value += 1
                        if listener.wait(timeout=0.2):
                            self.value += 1
                        backoff = 0.1
            except BackendUnavailableError:
                self.value += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
