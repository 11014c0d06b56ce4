"""Exceptions that Loglane raises to its users.

    LoglaneError
    ├── ConfigurationError       a service, view, handler or option is declared wrongly
    │   ├── BadURLError          a --log / --db URL cannot be used
    │   └── PositionAheadOfLogError  a stored position lies beyond the log's end
    ├── BackendUnavailableError  a log or store server cannot be reached
    ├── UnreadableRowError       a stored view row does not validate, even upcast: rebuild
    ├── EnvelopeError            a record is not a readable CloudEvent
    ├── StaleBatchError          a batch lost its partition to another worker (fenced)
    ├── BatchConflictError       a batch met another batch's locks; it is run again
    ├── BatchRejectedError       the store refused a batch's changes (bad data, failing SQL)
    │   (defined next to what raises them:)
    ├── EventVersionError        event data of a version no upcaster reaches (loglane.events)
    ├── UnknownDeadLetterError   no dead letter of that id (loglane.dlq)
    ├── DeadLetterHandledError   that dead letter was re-driven or dropped (loglane.dlq)
    ├── RetentionGapError        a rebuild needs records retention dropped (loglane.rebuild)
    └── KeyInUseError            an Idempotency-Key still being appended (loglane.api)

    PermanentError               raised by a handler: no retry can help; straight to the DLQ

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


class PositionAheadOfLogError(ConfigurationError):
    """A stored input position lies beyond the end of its partition: the log was recreated
    or truncated under the store. Consuming would skip every new record until the log grew
    past the old position, so the worker stops and says how to reset."""


class BatchConflictError(LoglaneError):
    """The batch's transaction lost a lock race with another batch (a deadlock or a
    serialization failure); it was rolled back in full and the worker runs it again."""


class BatchRejectedError(LoglaneError):
    """The store refused the changes of a batch: a value it cannot hold, a constraint, or a
    handler's SQL that fails. Nothing was written; the worker isolates the event at fault,
    dead-letters it with this message, and commits the rest."""


class PermanentError(Exception):
    """Raise it (or a subclass) from a handler for a failure no retry can fix, such as a
    business rule the event breaks: the event goes to the DLQ at once, without the retries
    a passing failure (a timeout, a lock) gets. `Retry(give_up_on=...)` names other
    exception types to treat the same way."""


class UnreadableRowError(LoglaneError):
    """A stored row of a view does not validate as the view's current model, even after its
    upcasters (or has none for its version, or was written by newer code). The HTTP API
    answers 503 with this message; a handler that reads the row fails with it, and its event
    is retried, then dead-lettered. Declare upcasters for the old version, or rebuild the
    view from the log (`loglane rebuild`)."""
