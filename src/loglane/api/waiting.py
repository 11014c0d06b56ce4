"""Waiting for requests and positions without polling the store per waiter.

Every HTTP handler that waits (POST `?wait=`, GET `/requests/<id>?wait=`, a view read with
`?position=`) registers an asyncio future with its service's `Watcher` and sleeps on it. The
watcher learns of progress in two ways and wakes the futures it concerns:

- pushed: a worker in the same process calls `committed(batch)` from its `on_commit` hook
  right after the store committed, with the outcomes and position in hand (no query at all);
- observed: a thread polls the store's `change_marker()` (SQLite: `PRAGMA data_version`, one
  cheap pragma) while anyone waits, and when it moves the watcher asks the store for the
  outcomes of every waiting request in ONE query and for the positions in one more. Stores
  without a marker are re-queried on a fixed interval instead.

So a thousand waiters cost what one does: one poll loop, one query per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from starlette.concurrency import run_in_threadpool

from loglane.envelope import COMMAND_SOURCE
from loglane.records import TopicPartition
from loglane.stores.base import Batch, RequestOutcome, Store

logger = logging.getLogger("loglane.api")


class Watcher:
    """Wakes the waiters of one service's requests and positions."""

    def __init__(
        self,
        service: str,
        store: Store,
        *,
        poll_interval: float = 0.002,
        requery_interval: float = 0.05,
    ) -> None:
        self.service = service
        self._store = store
        self._poll_interval = poll_interval
        self._requery_interval = requery_interval
        self._requests: dict[str, set[asyncio.Future[RequestOutcome]]] = {}
        self._positions: dict[TopicPartition, set[tuple[int, asyncio.Future[None]]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._busy = threading.Event()
        self._stopped = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching; call from the event loop the waiters run on."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"loglane-watch-{self.service}")
        self._thread = threading.Thread(
            target=self._poll_marker, name=f"loglane-marker-{self.service}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        self._stopped.set()
        self._busy.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._thread is not None:
            await run_in_threadpool(self._thread.join)

    # -- waiting --------------------------------------------------------------------------------

    @contextmanager
    def request(self, request_id: str) -> Iterator[asyncio.Future[RequestOutcome]]:
        """A future for the outcome of `request_id`, registered for the block's duration.

        Register before appending the command, so no outcome can slip by unseen.
        """
        future: asyncio.Future[RequestOutcome] = asyncio.get_running_loop().create_future()
        self._requests.setdefault(request_id, set()).add(future)
        self._busy.set()
        try:
            yield future
        finally:
            waiters = self._requests.get(request_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._requests[request_id]
            self._settle()

    async def outcome(self, request_id: str, timeout: float) -> RequestOutcome | None:
        """The outcome of `request_id`, waiting up to `timeout` seconds; None if still pending."""
        with self.request(request_id) as future:
            found = await run_in_threadpool(self._store.requests, self.service, [request_id])
            if request_id in found:
                return found[request_id]
            return future.result() if await settled(future, timeout) else None

    async def reach(self, partition: TopicPartition, offset: int, timeout: float) -> bool:
        """Whether the store's position of `partition` passes `offset` within `timeout`."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (offset, future)
        self._positions.setdefault(partition, set()).add(entry)
        self._busy.set()
        try:
            positions = await run_in_threadpool(self._store.positions, self.service)
            if positions.get(partition, 0) > offset:
                return True
            return await settled(future, timeout)
        finally:
            waiters = self._positions.get(partition)
            if waiters is not None:
                waiters.discard(entry)
                if not waiters:
                    del self._positions[partition]
            self._settle()

    @property
    def waiting(self) -> int:
        return sum(map(len, self._requests.values())) + sum(map(len, self._positions.values()))

    def _settle(self) -> None:
        if not self._requests and not self._positions:
            self._busy.clear()

    # -- learning of progress -------------------------------------------------------------------

    def committed(self, batch: Batch) -> None:
        """A worker of this process committed `batch`; safe to call from any thread."""
        if self._loop is None or self._loop.is_closed():
            return
        outcomes = {
            outcome.request_id: outcome
            for outcome in batch.requests
            if outcome.source == COMMAND_SOURCE  # another producer's id may look the same
        }
        self._loop.call_soon_threadsafe(self._resolve, outcomes, {batch.source: batch.position})

    def _resolve(
        self, outcomes: Mapping[str, RequestOutcome], positions: Mapping[TopicPartition, int]
    ) -> None:
        for request_id, outcome in outcomes.items():
            for future in self._requests.get(request_id, ()):
                if not future.done():
                    future.set_result(outcome)
        for partition, position in positions.items():
            for offset, reached in self._positions.get(partition, ()):
                if position > offset and not reached.done():
                    reached.set_result(None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._check()
            except Exception as exc:
                # the store may be down: waiters time out on their own, so keep watching
                logger.warning("cannot read outcomes of %s: %s", self.service, exc)
                await asyncio.sleep(self._requery_interval)

    async def _check(self) -> None:
        request_ids = list(self._requests)
        outcomes: Mapping[str, RequestOutcome] = {}
        if request_ids:
            outcomes = await run_in_threadpool(self._store.requests, self.service, request_ids)
        positions: Mapping[TopicPartition, int] = {}
        if self._positions:
            positions = await run_in_threadpool(self._store.positions, self.service)
        self._resolve(outcomes, positions)

    def _poll_marker(self) -> None:
        """Wake the watcher whenever the store changes, while anyone waits."""
        last: int | None = None
        while not self._stopped.is_set():
            if not self._busy.wait(1.0):
                continue
            try:
                marker = self._store.change_marker()
            except Exception:
                marker = None
            if marker is None or marker != last:
                last = marker
                self._wake_soon()
            self._stopped.wait(
                self._poll_interval if marker is not None else self._requery_interval
            )

    def _wake_soon(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # the loop may close between the check and the call
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)


async def settled(future: asyncio.Future[Any], timeout: float) -> bool:
    """Whether `future` got its result within `timeout` seconds."""
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        return False
    return True
