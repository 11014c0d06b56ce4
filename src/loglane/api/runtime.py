"""What the API holds for one service while it serves it: store, watcher and ledger writer."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from loglane.api.grouping import GroupWriter
from loglane.api.settings import ApiSettings
from loglane.api.waiting import Watcher
from loglane.errors import LoglaneError
from loglane.events import Event
from loglane.logs.base import Log
from loglane.records import Message, Position
from loglane.service import Service
from loglane.stores.base import AcceptedCommand, Store
from loglane.worker import ensure_topics

logger = logging.getLogger("loglane.api")

T = TypeVar("T")


class KeyInUseError(LoglaneError):
    """Another request with the same `Idempotency-Key` is still being appended."""


class ServiceRuntime:
    """One service's backends as the API uses them, opened on first use.

    Opening is lazy so that a server whose store or log is down still starts, answers
    `/healthz`, and reports the outage on `/readyz` and as 503s until it comes back.
    """

    def __init__(
        self,
        service: Service,
        log: Log,
        store_factory: Callable[[str], Store],
        appender: GroupWriter[Message, Position],
        settings: ApiSettings,
    ) -> None:
        self.service = service
        self.log = log
        self.appender = appender
        self.settings = settings
        self._store_factory = store_factory
        self._store: Store | None = None
        self._watcher: Watcher | None = None
        self._ledger = GroupWriter(self._record_accepted)
        self._opening = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def is_open(self) -> bool:
        return self._watcher is not None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError(f"{self.name}: call open() before using the store")
        return self._store

    @property
    def watcher(self) -> Watcher:
        if self._watcher is None:
            raise RuntimeError(f"{self.name}: call open() before waiting")
        return self._watcher

    async def open(self) -> None:
        """Open the store, create topics and tables; cheap once done. Raises while down."""
        if self._watcher is not None:
            return
        async with self._opening:
            if self._watcher is not None:
                return
            self._store = await run_in_threadpool(self._open_store)
            watcher = Watcher(
                self.name,
                self._store,
                poll_interval=self.settings.poll_interval,
                requery_interval=self.settings.requery_interval,
            )
            watcher.start()
            self._watcher = watcher

    def _open_store(self) -> Store:
        store = self._store or self._store_factory(self.name)
        try:
            ensure_topics(self.log, [self.service])
            store.prepare(self.name, list(self.service.views.values()))
        except BaseException:
            store.close()
            raise
        return store

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        if self._store is not None:
            await run_in_threadpool(self._store.close)
            self._store = None

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking backend call in the thread pool, the event loop stays free."""
        return await run_in_threadpool(func, *args)

    # -- the command ledger ---------------------------------------------------------------------

    async def claim(self, request_id: str, fingerprint: str) -> AcceptedCommand | None:
        """Claim `request_id` for appending, or the entry of whoever accepted it first.

        While another request holds the claim without a position yet, wait for it (this
        only happens to concurrent retries, so a short backoff poll is cheap enough); its
        claim is taken over if it stays without a position for `claim_timeout`.
        """
        deadline = time.monotonic() + self.settings.claim_timeout * 2
        delay = 0.002
        while True:
            entry = await self.call(
                self._claim_once, request_id, fingerprint, self.settings.claim_timeout
            )
            if entry is None or entry.position is not None or entry.fingerprint != fingerprint:
                return entry
            if time.monotonic() > deadline:
                raise KeyInUseError(
                    f"a request with Idempotency-Key {request_id!r} is still being accepted; "
                    "retry in a moment"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _claim_once(
        self, request_id: str, fingerprint: str, stale_after: float
    ) -> AcceptedCommand | None:
        return self.store.claim(self.name, request_id, fingerprint, stale_after=stale_after)

    async def record_accepted(self, accepted: AcceptedCommand) -> None:
        """Note the appended command in the ledger; the command is durable already, so a
        failure here is logged, not raised: the request must still be answered with 202."""
        try:
            await self._ledger.submit(accepted)
        except Exception as exc:
            logger.warning(
                "%s: appended request %s but could not record it (it shows as unknown until "
                "handled): %s",
                self.name,
                accepted.request_id,
                exc,
            )

    def _record_accepted(self, accepted: Sequence[AcceptedCommand]) -> list[None]:
        self.store.record_accepted(self.name, accepted)
        return [None] * len(accepted)


def fingerprint(command: Event) -> str:
    """Identifies a command's type and body, to catch an Idempotency-Key reused for another."""
    digest = hashlib.sha256(command.event_type.encode() + b"\x00" + to_json(command))
    return digest.hexdigest()
