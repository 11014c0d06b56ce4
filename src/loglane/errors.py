"""Exceptions that Loglane raises to its users.

    LoglaneError
    ├── ConfigurationError       a service, view, handler or option is declared wrongly
    │   └── BadURLError          a --log / --db URL cannot be used
    ├── BackendUnavailableError  a log or store server cannot be reached
    ├── EnvelopeError            a record is not a readable CloudEvent
    └── StaleBatchError          a batch lost its partition to another worker (fenced)

Every message says what went wrong and what to do about it.
"""

from __future__ import annotations


class LoglaneError(Exception):
    """Base class of every error Loglane raises on purpose."""


class ConfigurationError(LoglaneError):
    """A service, view, handler or option is declared in a way Loglane cannot run."""


class BadURLError(ConfigurationError):
    """A backend URL has an unknown scheme or a malformed location."""


class BackendUnavailableError(LoglaneError):
    """The log or the store cannot be reached; the worker retries, the CLI reports it."""


class EnvelopeError(LoglaneError):
    """A record lacks the CloudEvents attributes Loglane needs; it goes to the DLQ."""


class StaleBatchError(LoglaneError):
    """The stored position moved since the batch began: another worker owns the partition now.

    The batch is rolled back in full; the worker reloads the position and carries on.
    """
