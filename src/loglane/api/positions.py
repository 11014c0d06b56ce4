"""Position tokens: where a command landed, handed to clients as one opaque string.

A POST returns the token of its command's place in `<service>.in`; a view read given that
token waits until the service's workers have applied it (read-your-writes). The token is
base64url text of `topic:partition:offset`, so clients need not parse it, and it stays
meaningful to any API replica because it names a log position, not a server's memory.
"""

from __future__ import annotations

import base64
import binascii

from loglane.records import Position


class BadPositionError(ValueError):
    """A position token that no POST of this API could have returned."""


def encode_position(position: Position) -> str:
    text = f"{position.topic}:{position.partition}:{position.offset}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_position(token: str) -> Position:
    """The position in `token`; `BadPositionError` if it is not one this API hands out."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        topic, partition, offset = text.rsplit(":", 2)
        position = Position(topic, int(partition), int(offset))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadPositionError(
            "not a position token; pass the 'position' value a POST returned"
        ) from None
    if not topic or position.partition < 0 or position.offset < 0:
        raise BadPositionError("not a position token; pass the 'position' value a POST returned")
    return position
