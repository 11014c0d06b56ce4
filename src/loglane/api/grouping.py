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
    """Runs `write(items) -> results` (blocking, in a thread) over groups of submitted items.

    `write` must return one result per item, in order; if it raises, every item of that
    group gets the error.
    """

    def __init__(
        self, write: Callable[[Sequence[Item]], Sequence[Result]], *, max_group: int = 500
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
                try:
                    results = await run_in_threadpool(self._write, [item for item, _ in group])
                except Exception as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(group, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._drainer = None
