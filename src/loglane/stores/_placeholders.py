"""One parameter style for users' SQL on every store: psycopg's, which PostgreSQL runs as is.

Portable statements name parameters `%s` (a sequence of values) or `%(name)s` (a mapping),
and write a literal `%` as `%%`, inside string literals too. SQLite's own style (`?` and
`:name`) is translated from them; a statement with none of the three marks is SQLite's own
and runs as written, so statements written for SQLite before keep working there.
"""

from __future__ import annotations

import re
from functools import lru_cache

_MARK = re.compile(r"%(?:(%)|s|\(([A-Za-z_][A-Za-z0-9_]*)\)s)")


@lru_cache(maxsize=1024)
def to_sqlite(sql: str) -> str:
    """`sql` in SQLite's parameter style."""
    if "%" not in sql or _MARK.search(sql) is None:
        return sql
    return _MARK.sub(_sqlite_mark, sql)


def _sqlite_mark(match: re.Match[str]) -> str:
    if match.group(1):
        return "%"
    name = match.group(2)
    return "?" if name is None else f":{name}"
