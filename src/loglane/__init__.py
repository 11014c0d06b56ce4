"""Loglane: event-driven microservices on a log.

Declare app services, their views and handlers; Loglane's workers materialize each service's
input in order into its views, exactly once in effect, and publish its output events.
"""

from loglane.errors import (
    BackendUnavailableError,
    BadURLError,
    ConfigurationError,
    EnvelopeError,
    LoglaneError,
    PermanentError,
    StaleBatchError,
    UnreadableRowError,
)
from loglane.events import Event, EventVersionError, Rejected, Upcasters
from loglane.landscape import Landscape, load_landscape
from loglane.migrations import Migrator
from loglane.service import Retry, Service
from loglane.stores.base import RequestOutcome, RequestStatus
from loglane.transaction import Transaction
from loglane.views import View
from loglane.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "BadURLError",
    "ConfigurationError",
    "EnvelopeError",
    "Event",
    "EventVersionError",
    "Landscape",
    "LoglaneError",
    "Migrator",
    "PermanentError",
    "Rejected",
    "RequestOutcome",
    "RequestStatus",
    "Retry",
    "Service",
    "StaleBatchError",
    "Transaction",
    "UnreadableRowError",
    "Upcasters",
    "View",
    "Worker",
    "__version__",
    "load_landscape",
]
