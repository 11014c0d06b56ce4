"""Test a landscape in-process: post commands, run until quiet, inspect views and events.

    from loglane.testing import LandscapeTest

    def test_a_new_customer_is_created():
        with LandscapeTest(customers) as test:
            request_id = test.send(CreateCustomer(customer_id="c1", name="Ada"))
            test.run_until_quiet()
            assert test.view(customers_view).get("c1").name == "Ada"
            assert test.outcome(request_id).status == "done"

The landscape runs on the real embedded backends, in a temporary folder unless `log_url` and
`db_url` say otherwise, one worker per service, driven step by step on the calling thread.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Generic

from loglane.commands import post
from loglane.envelope import Envelope, read_envelope
from loglane.events import Event
from loglane.landscape import Landscape
from loglane.records import Record, TopicPartition
from loglane.service import Service
from loglane.stores.base import RequestOutcome, Row, Store
from loglane.urls import open_log, open_store
from loglane.views import Key, View
from loglane.worker import Worker, ensure_topics


class ViewReader(Generic[Row]):
    """Committed rows of one view."""

    def __init__(self, store: Store, view: View[Row]) -> None:
        self._store = store
        self._view = view

    def get(self, key: Key) -> Row | None:
        return self._store.get(self._view, key)

    def all(self, **where: Any) -> list[Row]:
        rows: list[Row] = []
        after: Key | None = None
        while page := self._store.query(self._view, where=where, after=after, limit=500):
            rows.extend(page)
            after = self._view.key_of(page[-1])
        return rows


class LandscapeTest:
    """Runs `services` on embedded backends for a test; use it as a context manager."""

    def __init__(
        self,
        *services: Service,
        log_url: str | None = None,
        db_url: str | None = None,
        batch_size: int = 1000,
    ) -> None:
        self.landscape = Landscape(services)
        self._directory: Path | None = None
        if log_url is None or db_url is None:
            self._directory = Path(tempfile.mkdtemp(prefix="loglane-test-"))
        log_url = log_url or f"embedded:///{self._directory}/log.db"
        db_url = db_url or f"sqlite:///{self._directory}/{{service}}.db"
        self.log = open_log(log_url)
        ensure_topics(self.log, list(self.landscape))
        self.stores = {s.name: open_store(db_url, s.name) for s in self.landscape}
        self.workers = [
            Worker(s, self.log, self.stores[s.name], batch_size=batch_size) for s in self.landscape
        ]
        for worker in self.workers:
            worker.start()

    def __enter__(self) -> LandscapeTest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        for store in self.stores.values():
            store.close()
        self.log.close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def send(
        self, command: Event, *, service: str | None = None, request_id: str | None = None
    ) -> str:
        """Post `command` to the service that accepts it; return its request id."""
        target = self.landscape.service(service) if service else self.landscape.service_for(command)
        request_id, _ = post(self.log, target, command, request_id=request_id)
        return request_id

    def run_until_quiet(self, timeout: float = 60.0) -> int:
        """Run every worker until none has anything left to handle; return records handled."""
        deadline = time.monotonic() + timeout
        total = 0
        while time.monotonic() < deadline:
            taken = sum(worker.run_once(timeout=0) for worker in self.workers)
            total += taken
            if taken == 0 and self._caught_up():
                return total
        raise TimeoutError(f"the landscape was still busy after {timeout}s")

    def _caught_up(self) -> bool:
        for service in self.landscape:
            positions = self.stores[service.name].positions(service.name)
            for topic in service.topics:
                for partition, offsets in self.log.offsets(topic).items():
                    stored = positions.get(TopicPartition(topic, partition), 0)
                    if offsets.end > stored:
                        return False
        return True

    def view(self, view: View[Row]) -> ViewReader[Row]:
        return ViewReader(self.stores[view.service], view)

    def outcome(self, request_id: str, *, service: str | None = None) -> RequestOutcome | None:
        names = [service] if service else list(self.landscape.services)
        for name in names:
            found = self.stores[name].request(name, request_id)
            if found is not None:
                return found
        return None

    def records(self, topic: str) -> list[Record]:
        """Every record of `topic`, partition by partition."""
        found: list[Record] = []
        for partition, offsets in self.log.offsets(topic).items():
            found.extend(
                self.log.read(
                    TopicPartition(topic, partition), offsets.start, offsets.end - offsets.start
                )
            )
        return found

    def events(self, service: str) -> list[Envelope]:
        """The envelopes `service` emitted on its output topic."""
        return [
            read_envelope(r) for r in self.records(self.landscape.service(service).output_topic)
        ]

    def dead_letters(self, service: str) -> list[Record]:
        return self.records(self.landscape.service(service).dlq_topic)
