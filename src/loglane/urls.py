"""Backends by URL: `--log` / `LOGLANE_LOG` and `--db` / `LOGLANE_DB`.

    embedded:///.loglane/log.db      the embedded log (default); path relative to the cwd
    embedded:////var/lib/app/log.db  the same with an absolute path (four slashes)
    sqlite:///.loglane/{service}.db  the SQLite store (default); {service} is the service name
    sqlite:////abs/path.db           an absolute path; without {service}, services share a file
    postgresql://user:pass@host:5432/db?schema={service}
                                     the PostgreSQL store; a schema per service by default.
                                     Missing parts come from PGHOST, PGPORT, PGUSER, PGPASSWORD,
                                     PGDATABASE (`postgresql://` alone uses them all); Loglane's
                                     options are schema, pool_size, pool_timeout and
                                     ledger_retention; other query parameters go to libpq
    kafka://host:9092[,host:9092]    Apache Kafka; options in `loglane.logs.kafka`

Relative and absolute paths follow SQLAlchemy's convention for SQLite URLs. Options go in the
query string, e.g. `embedded:///log.db?session_timeout=3&synchronous=normal`.

Kafka and PostgreSQL need the clients of the `kafka` and `postgres` extras. Their backend
modules are imported here, when a URL asks for one, so that the core never imports them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit

from loglane.errors import BadURLError, ConfigurationError
from loglane.logs.base import Log
from loglane.stores.base import Store

DEFAULT_LOG_URL = "embedded:///.loglane/log.db"
DEFAULT_DB_URL = "sqlite:///.loglane/{service}.db"


def _sqlite_path(url: str, scheme: str) -> str:
    rest = url[len(scheme) + 3 :].split("?", 1)[0]
    if not rest.startswith("/") or rest == "/":
        raise BadURLError(f"{url!r}: write {scheme}:///relative/path or {scheme}:////absolute/path")
    return rest[1:]


def _options(url: str, allowed: dict[str, type]) -> dict[str, object]:
    options: dict[str, object] = {}
    for name, value in parse_qsl(urlsplit(url).query, strict_parsing=False):
        if name not in allowed:
            raise BadURLError(f"{url!r}: unknown option {name!r}; known: {', '.join(allowed)}")
        try:
            options[name] = allowed[name](value)
        except ValueError:
            raise BadURLError(f"{url!r}: option {name}={value!r} is not a valid value") from None
    return options


@contextmanager
def _needs_extra(scheme: str, client: str, extra: str, modules: tuple[str, ...]) -> Iterator[None]:
    """Turn the import of a missing client (one of `modules`) into a line naming its extra."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in modules:
            raise
        raise ConfigurationError(
            f"{scheme}:// needs {client}: pip install 'loglane[{extra}]'"
        ) from None


def open_log(url: str) -> Log:
    """The log backend `url` names; `BadURLError` says what is wrong with it."""
    scheme = urlsplit(url).scheme
    if scheme == "embedded":
        from loglane.logs.embedded import EmbeddedLog

        options = _options(
            url, {"session_timeout": float, "heartbeat_interval": float, "synchronous": str}
        )
        return EmbeddedLog(_sqlite_path(url, scheme), **options)  # type: ignore[arg-type]
    if scheme == "kafka":
        with _needs_extra(scheme, "the Kafka client", "kafka", ("confluent_kafka",)):
            from loglane.logs.kafka import KafkaLog

        return KafkaLog.from_url(url)
    raise BadURLError(
        f"{url!r}: unknown log scheme {scheme!r}; use embedded:///path/to/log.db or "
        "kafka://host:port"
    )


def open_store(url: str, service: str) -> Store:
    """The store backend `url` names, for `service`."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from loglane.stores.sqlite import SQLiteStore

        options = _options(url, {"synchronous": str})
        path = _sqlite_path(url, scheme).replace("{service}", service)
        return SQLiteStore(path, **options)  # type: ignore[arg-type]
    if scheme in ("postgresql", "postgres"):
        with _needs_extra(scheme, "the PostgreSQL driver", "postgres", ("psycopg", "psycopg_pool")):
            from loglane.stores.postgres import PostgresStore

        conninfo, options = _postgres_url(url)
        return PostgresStore(conninfo, **options)  # type: ignore[arg-type]
    raise BadURLError(
        f"{url!r}: unknown store scheme {scheme!r}; use sqlite:///path/to/views.db or "
        "postgresql://user:password@host:5432/dbname"
    )


_POSTGRES_OPTIONS: dict[str, type] = {
    "schema": str,
    "pool_size": int,
    "pool_timeout": float,
    "ledger_retention": float,
}


def _postgres_url(url: str) -> tuple[str, dict[str, object]]:
    """Split Loglane's options off a PostgreSQL URL; libpq gets the rest as it was."""
    # split by hand: urlunsplit would turn a bare `postgresql://` into `postgresql:`
    base, _, query = url.partition("?")
    ours: list[tuple[str, str]] = []
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        (ours if name in _POSTGRES_OPTIONS else theirs).append((name, value))
    options = _options(f"{base}?{urlencode(ours)}", _POSTGRES_OPTIONS)
    return (f"{base}?{urlencode(theirs)}" if theirs else base), options
