"""What the API holds for one service while it serves it: store, watcher and ledger writer."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
            store.prepare(self.name, list(self.service.views.values()), self.service.migrations)
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

    async def claim(self, request_id: str, fingerprint: str) -> Claim:
        """Claim `request_id` for appending, or find the entry of whoever accepted it first.

        While another request holds the claim without a position yet, wait for it (this
        only happens to concurrent retries, so a short backoff poll is cheap enough); its
        claim is taken over if it stays without a position for `claim_timeout`.
        """
        deadline = time.monotonic() + self.settings.claim_timeout * 2
        delay = 0.002
        while True:
            claim = await self.call(self._claim_once, request_id, fingerprint)
            entry = claim.entry
            if claim.granted or entry.position is not None or entry.fingerprint != fingerprint:
                return claim
            if time.monotonic() > deadline:
                raise KeyInUseError(
                    f"another request with this Idempotency-Key (request id {request_id}) "
                    "is still being accepted; retry in a moment"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _claim_once(self, request_id: str, fingerprint: str) -> Claim:
        mine = AcceptedCommand(
            request_id=request_id, fingerprint=fingerprint, position=None, accepted_at=time.time()
        )
        found = self.store.claim(
            self.name,
            request_id,
            fingerprint,
            stale_after=self.settings.claim_timeout,
            accepted_at=mine.accepted_at,
        )
        return Claim(entry=mine, granted=True) if found is None else Claim(entry=found)

    async def record_accepted(self, accepted: AcceptedCommand) -> Position:
        """Note the appended command in the ledger; the position its request is answered with.

        That is the command's own position, unless its claim was taken over while it was
        being appended (it took longer than `claim_timeout`). Then the new holder appends
        the command again under the same request id, workers handle the first copy and
        drop the second (`loglane.dedupe`), and every request with that id is answered with
        the one position the ledger holds: this one waits for the new holder's, or claims
        the id back if the new holder released it or went stale in turn.

        The command is durable already, so a failure here is logged, not raised: the
        request must still be answered, with the command's own position.
        """
        own = accepted.position
        if own is None:
            raise ValueError(f"request {accepted.request_id} has no position to record")
        try:
            while True:
                entry = await self._ledger.submit(accepted)
                if entry == accepted:
                    return own
                if entry.position is not None:
                    return entry.position
                claim = await self.claim(accepted.request_id, accepted.fingerprint)
                if not claim.granted:
                    return own if claim.entry.position is None else claim.entry.position
                accepted = replace(accepted, accepted_at=claim.entry.accepted_at)
        except Exception as exc:
            logger.warning(
                "%s: appended request %s but could not record it (it shows as unknown until "
                "handled): %s",
                self.name,
                accepted.request_id,
                exc,
            )
            return own

    def _record_accepted(self, accepted: Sequence[AcceptedCommand]) -> list[AcceptedCommand]:
        return self.store.record_accepted(self.name, accepted)

    async def release(self, claim: AcceptedCommand) -> None:
        """Drop `claim`, whose command was not appended, so a retry can claim it again."""
        try:
            await self.call(self.store.release, self.name, claim)
        except Exception as exc:
            # the claim then goes stale and is taken over after claim_timeout
            logger.warning(
                "%s: cannot release the claim of %s: %s", self.name, claim.request_id, exc
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """What claiming a request id came to: when `granted`, `entry` is the caller's own
    claim (its `accepted_at` the owner token) to append and then record or release; else
    the entry of whoever claimed or accepted the id first."""

    entry: AcceptedCommand
    granted: bool = False


def fingerprint(command: Event) -> str:
    """Identifies a command's type and body, to catch an Idempotency-Key reused for another."""
    digest = hashlib.sha256(command.event_type.encode() + b"\x00" + to_json(command))
    return digest.hexdigest()
