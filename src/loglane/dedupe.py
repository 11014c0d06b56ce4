"""Dropping re-published duplicates, exactly: origin watermarks, and a window of applied ids.

An event can reach a worker twice: a Loglane worker that crashed after publishing its outbox
but before deleting it publishes the same events again when its partition is next assigned
(the same ids, the same `ce_loglaneorigin`), and any producer may retry a send. Two
mechanisms drop the second copy:

- **Origin watermarks**, for events another Loglane service emitted. Such an event names its
  origin: the input partition, offset and emit index of the record whose handling emitted it.
  One producer partition's events are committed, published and re-published in that order,
  and the log keeps the order within each partition, so every copy of an event arrives after
  the original in the same consumer partition, and no later event arrives before a
  re-published copy of an earlier one. The worker keeps, per consumer partition and origin
  partition, the highest (offset, index) applied, stored in the same transaction as its
  position; an event at or below it is a copy. This holds however late the copy comes (a
  producer down for a day), and costs one small entry per origin partition.
- **Applied ids**, for commands and other events without an origin: the (source, id) pairs
  applied within the last `window` offsets of each input partition, stored one row per batch
  so they survive restarts. A copy further back than that is not recognised. The copies the
  HTTP API can make (a group append retried item by item, a stale `Idempotency-Key` claim
  taken over) follow their original within seconds, and the Kafka producer is idempotent, so
  the window is there for producers outside Loglane that re-send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from loglane.envelope import Envelope
from loglane.stores.base import Watermarks


def identity(envelope: Envelope) -> str:
    """The (source, id) pair that identifies an event, as one string."""
    return f"{envelope.source}\x1f{envelope.id}"


def origin_mark(origin: str) -> tuple[str, tuple[int, int]] | None:
    """`topic/partition/offset/index` as (`topic/partition`, (offset, index)); None if malformed."""
    parts = origin.rsplit("/", 3)
    if len(parts) != 4 or not all(part.isdigit() for part in parts[1:]):
        return None
    topic, partition, offset, index = parts
    return f"{topic}/{partition}", (int(offset), int(index))


def seen_before(watermarks: Watermarks, origin: str) -> bool | None:
    """Whether an event from `origin` was applied already, moving the watermark if not;
    None when the origin cannot be read (fall back to ids)."""
    mark = origin_mark(origin)
    if mark is None:
        return None
    place, position = mark
    last = watermarks.get(place)
    if last is not None and position <= last:
        return True
    watermarks[place] = position
    return False


class AppliedWindow:
    """Event identities applied from one partition within the last `window` offsets."""

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
