"""How an API server behaves: limits and timings, with defaults that suit most deployments."""

from __future__ import annotations

from dataclasses import dataclass

from loglane.errors import ConfigurationError


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """Limits and timings of the HTTP API.

    - `max_body_bytes`: larger request bodies get 413.
    - `max_wait`: the longest `?wait=` a client may ask for, in seconds.
    - `read_wait`: how long a view read with `?position=` waits for the view to catch up.
    - `claim_timeout`: an `Idempotency-Key` claimed but not appended for this long (its
      server died mid-request) is taken over by the next request with that key.
    - `poll_interval`: how often waiters check the store's change marker while anyone waits.
    - `requery_interval`: how often they re-query a store that has no change marker.
    """

    max_body_bytes: int = 1_048_576
    max_wait: float = 60.0
    read_wait: float = 10.0
    claim_timeout: float = 30.0
    poll_interval: float = 0.002
    requery_interval: float = 0.05

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ConfigurationError("max_body_bytes must be at least 1")
        for name in ("max_wait", "read_wait", "claim_timeout", "poll_interval", "requery_interval"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
