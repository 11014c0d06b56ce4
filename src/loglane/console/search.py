"""Finding a request's records in a topic: searched from the end back, within bounds.

A request's events carry its id as `ce_correlationid`; a command posted without one is known
by its own `ce_id`. Logs are read forward only, so each partition is read in chunks from its
end backwards, until the records are older than the cutoff or `SCAN_LIMIT` were read.
"""

from __future__ import annotations

from collections.abc import Callable

from loglane.logs.base import Log
from loglane.records import Record, TopicPartition

SCAN_LIMIT = 5000
CHUNK = 500


def search(
    log: Log, topic: str, matches: Callable[[Record], bool], cutoff_ms: int | None
) -> list[Record]:
    """The records of `topic` that `matches`, searched from each partition's end back to
    `cutoff_ms` (or just the last chunk without one), at most SCAN_LIMIT per partition."""
    found: list[Record] = []
    for partition, offsets in sorted(log.offsets(topic).items()):
        tp = TopicPartition(topic, partition)
        end = offsets.end
        while end > offsets.start and offsets.end - end < SCAN_LIMIT:
            start = max(offsets.start, end - CHUNK)
            chunk = _read(log, tp, start, end)
            found.extend(record for record in chunk if matches(record))
            if not chunk or cutoff_ms is None or chunk[0].timestamp_ms < cutoff_ms:
                break
            end = start
    return found


def _read(log: Log, tp: TopicPartition, start: int, end: int) -> list[Record]:
    records: list[Record] = []
    while start < end and (chunk := log.read(tp, start, end - start)):
        records.extend(record for record in chunk if record.offset < end)
        start = chunk[-1].offset + 1
    return records


def correlated_with(request_id: str) -> Callable[[Record], bool]:
    wanted = request_id.encode()

    def matches(record: Record) -> bool:
        correlation = record.header("ce_correlationid")
        if correlation is not None:
            return correlation == wanted
        return record.header("ce_id") == wanted

    return matches
