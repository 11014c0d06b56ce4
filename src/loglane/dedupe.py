"""Dropping re-published duplicates: the ids a worker applied recently, per partition.

After a crash between commit and publish, output events are published again with the same
ids, a little later in the same partitions (same key, same partition). A consumer remembers
the ids of events it applied within the last `window` offsets of each input partition and
skips any it meets again. The ids are stored with each batch, so the memory survives
restarts; one row per batch keeps the write path sequential.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class AppliedWindow:
    """Event ids applied from one partition within the last `window` offsets."""

    def __init__(self, window: int, batches: Iterable[tuple[int, Iterable[str]]] = ()) -> None:
        self.window = window
        self._ids: set[str] = set()
        self._batches: deque[tuple[int, list[str]]] = deque()
        for position, ids in batches:
            self.add(position, ids)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, position: int, ids: Iterable[str]) -> None:
        """Remember `ids`, applied in a batch that ended at `position`; forget the oldest."""
        batch = list(ids)
        self._batches.append((position, batch))
        self._ids.update(batch)
        horizon = self.horizon(position)
        while self._batches and self._batches[0][0] < horizon:
            self._ids.difference_update(self._batches.popleft()[1])

    def horizon(self, position: int) -> int:
        """Batches that ended before this position are forgotten."""
        return position - self.window
