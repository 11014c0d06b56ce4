"""What every peer program is told, and the SQL they share (stdlib only: each peer runs in its
own virtual environment, without Loglane).

A peer drains `--input` (JSON commands `{"key", "seq", "amount", "note"}`), adds each command
to its key's row of `<schema>.accounts` (`count + 1`, `total + amount`), emits
`{"key", "seq", "amount"}` keyed by the key on `--output`, and commits its consumer offsets. It
runs until SIGTERM; the runner watches the group's committed offsets to see it finish.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


def peer_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The common options, and those `extra` adds for one peer."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="Kafka host:port")
    parser.add_argument("--input", required=True, help="the topic of commands")
    parser.add_argument("--output", required=True, help="the topic of output events")
    parser.add_argument("--group", required=True, help="the consumer group")
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--schema", required=True, help="holds this peer's accounts table")
    parser.add_argument("--batch", type=int, default=1000, help="records per batch")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def upsert_sql(schema: str, placeholders: tuple[str, str]) -> str:
    """Read-modify-write of one key's row; `placeholders` is the driver's (`%s`, `$1`...)."""
    key, amount = placeholders
    return (
        f'INSERT INTO "{schema}".accounts AS t (key, count, total) VALUES ({key}, 1, {amount}) '
        "ON CONFLICT (key) DO UPDATE SET count = t.count + 1, total = t.total + excluded.total"
    )


def output_body(command: dict[str, object]) -> bytes:
    """The output event of one command."""
    return json.dumps(
        {"key": command["key"], "seq": command["seq"], "amount": command["amount"]},
        separators=(",", ":"),
    ).encode()
