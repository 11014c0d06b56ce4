"""Appending the commands of many requests in one write, each with its own result.

The API appends every POST's command through one `GroupWriter`, so one log append carries
the commands of many requests. A log's `append` answers for the whole group, but a group
can fail in part: on Kafka one record too large or one partition without a leader fails
the call while the other records are stored. Answering every request of the group with
that error would send 503s for stored commands, and clients that retry them without an
`Idempotency-Key` would post them twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from loglane.errors import BackendUnavailableError
from loglane.logs.base import Log
from loglane.records import Message, Position


def append_each(log: Log, messages: Sequence[Message]) -> list[Position | Exception]:
    """Append `messages` in one call; one outcome per message: its position, or its error.

    When the group fails, each message is appended again on its own to learn its result.
    One the failed group did store is then stored twice, with the same CloudEvents id and
    key, so in the same partition, and workers drop the second copy (`loglane.dedupe`).
    Once a message fails alone because the log is unavailable, the rest of the group get
    that error without another try: the log is down, not the message.
    """
    try:
        return list(log.append(messages))
    except Exception as exc:
        if len(messages) == 1:
            return [exc]
    outcomes: list[Position | Exception] = []
    down: BackendUnavailableError | None = None
    for message in messages:
        if down is not None:
            outcomes.append(down)
            continue
        try:
            (position,) = log.append([message])
        except BackendUnavailableError as exc:
            down = exc
            outcomes.append(exc)
        except Exception as exc:
            outcomes.append(exc)
        else:
            outcomes.append(position)
    return outcomes
