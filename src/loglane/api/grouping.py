"""Group commit: concurrent requests share one blocking write instead of queueing for it.

Appending to the embedded log costs one fsync per transaction, and SQLite serialises
writers anyway. While one group is being written, the items submitted meanwhile gather
and go together in the next write, so under load one fsync serves many POSTs and alone
a request waits for nothing but its own write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupWriter(Generic[Item, Result]):
    """Runs `write(items) -> outcomes` (blocking, in a thread) over groups of submitted items.

    `write` returns one outcome per item, in order: the item's result, or the exception
    that item alone failed with, which `submit` raises for it while the rest of the group
    get their results. If `write` raises, nothing is known of any item, and every item of
    that group gets the error.
    """

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Sequence[Result | Exception]],
        *,
        max_group: int = 500,
    ) -> None:
        self._write = write
        self._max_group = max_group
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        # shield: a client that disconnects must not cancel a write others share
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
                outcomes: Sequence[Result | Exception]
                try:
                    outcomes = await run_in_threadpool(self._write, [item for item, _ in group])
                    if len(outcomes) != len(group):
                        raise RuntimeError(
                            f"a group write returned {len(outcomes)} outcomes for "
                            f"{len(group)} items"
                        )
                except Exception as exc:
                    outcomes = [exc] * len(group)
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._drainer = None
