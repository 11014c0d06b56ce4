"""Parking: after a command of key K is dead-lettered, later commands of K wait behind it.

Per-key order is the promise a partition keeps, and a dead letter would break it: the
commands of K after the failed one would take effect without it, and re-driving it later
would apply it after them. So by default (`Service(park_keys=True)`) a dead-lettered command
parks its key: later commands of that key are not handled but kept, in order, in the store
(`loglane_parked_records`), in the same transaction that moves the position.

The key is released when the command at its head is handled after all:

- re-driven (`loglane dlq redrive`): the copy carries `loglane_redriven` with the head's
  place, so it is let through; once it succeeds, the parked commands run after it in the
  same transaction, in order, and the key is free. If it fails again it is the new head.
- dropped (`loglane dlq drop`): a `loglane.Unpark` control record naming the head goes to
  the input, and the parked commands run when the worker reads it.

A parked command that fails when its turn comes becomes the new head, and those after it
stay parked. Parking covers the service's own input (`<service>.in`), where keys are the
commands' keys; events followed from other services are dead-lettered alone. With
`park_keys=False` a dead letter is passed over and later commands of its key go on.
"""

from __future__ import annotations

from loglane.envelope import COMMAND_SOURCE, SPECVERSION, output_event_id
from loglane.records import Message, Record

REDRIVEN_HEADER = "loglane_redriven"
"""On a re-driven dead letter: the place (`topic:partition:offset`) it was first read at."""
UNPARK_HEADER = "loglane_unpark"
"""On a `loglane.Unpark` control record: the place of the head whose key it releases."""
UNPARK_TYPE = "loglane.Unpark"


def place(record: Record) -> str:
    """Where `record` sits, as dead letters name it (`topic:partition:offset`)."""
    return f"{record.topic}:{record.partition}:{record.offset}"


def key_of(record: Record) -> str | None:
    """The key `record` is parked under, None for a record without a key: its key as text,
    with a NUL written `\\x00`, which a store's text column can hold."""
    if record.key is None:
        return None
    return record.key.decode(errors="replace").replace("\x00", "\\x00")


def unpark_message(service: str, input_topic: str, key: bytes, head: str) -> Message:
    """The control record that releases `key`, parked behind the dead letter `head`, after
    that letter was dropped."""
    headers = (
        ("ce_specversion", SPECVERSION.encode()),
        ("ce_id", output_event_id(service, f"unpark {head}", 0).encode()),
        ("ce_source", COMMAND_SOURCE.encode()),
        ("ce_type", UNPARK_TYPE.encode()),
        ("content-type", b"application/json"),
        (UNPARK_HEADER, head.encode()),
    )
    return Message(input_topic, key, b"{}", headers)
