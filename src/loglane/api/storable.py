"""Input every store and JSON can hold, checked at the door: bad input is a 422, never a 5xx.

- PostgreSQL text cannot hold NUL (U+0000).
- No UTF-8 text, so neither SQLite's, PostgreSQL's nor JSON's, can hold a lone surrogate
  (U+D800 to U+DFFF); a Python string can, and JSON's `"\\ud800"` escape makes one.
- JSON has no NaN or Infinity; a number too large for a double is read as Infinity.
- SQLite and PostgreSQL integers stop at 64 bits.

The API refuses such values on every store alike, so that a request means the same on each:
in a view key, a filter, a cursor or a request id, and, for strings and numbers, anywhere
in a command, which a worker would otherwise fail to commit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from fastapi.exceptions import RequestValidationError

Loc = tuple[str | int, ...]

_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = range(-(2**63), 2**63)


def check(value: object, loc: Loc) -> None:
    """Refuse (422) the scalar `value` found at `loc` if some store cannot hold it."""
    problem = flaw(value)
    if problem is not None:
        raise refusal([(loc, f"Value {problem}", value)])


def check_document(document: object, loc: Loc) -> None:
    """Refuse (422) the JSON-like `document` at `loc` if a string or a float in it, at any
    depth and keys included, is one that some store or JSON cannot hold."""
    found = list(_flaws(document, loc))
    if found:
        raise refusal(found)


def flaw(value: object) -> str | None:
    """Why some store could not hold the scalar `value`, or None if every store can."""
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
        if _SURROGATE.search(value):
            return "contains a lone surrogate (\\ud800 to \\udfff), which is not Unicode text"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return "is NaN, Infinity or beyond 1.8e308, which JSON cannot hold"
    elif isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return "is beyond the 64-bit integers that SQLite and PostgreSQL store"
    return None


def refusal(found: list[tuple[Loc, str, object]]) -> RequestValidationError:
    """The 422 for the (loc, message, input) of values that some store cannot hold."""
    return RequestValidationError(
        [
            {"type": "value_error", "loc": loc, "msg": message, "input": value}
            for loc, message, value in found
        ]
    )


def _flaws(value: object, loc: Loc) -> Iterator[tuple[Loc, str, object]]:
    if isinstance(value, dict):
        for key, item in value.items():
            problem = flaw(key)
            if problem is not None:
                yield (*loc, key), f"Key {problem}", key
            yield from _flaws(item, (*loc, key))
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield from _flaws(item, (*loc, index))
    elif isinstance(value, str | float):
        problem = flaw(value)
        if problem is not None:
            yield loc, f"Value {problem}", value
