"""Run the workers of several services in one process, one thread each, until told to stop."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Sequence

from loglane.service import Service
from loglane.stores.base import Batch
from loglane.urls import open_log, open_store
from loglane.worker import Worker, ensure_topics

logger = logging.getLogger("loglane.runner")


class WorkerThreads:
    """One `Worker` thread per service, each with its own log and store connections."""

    def __init__(
        self,
        services: Sequence[Service],
        *,
        log_url: str,
        db_url: str,
        batch_size: int = 1000,
        on_commit: Callable[[Batch], None] | None = None,
    ) -> None:
        """A service listed twice gets two workers (members of its group) and so on;
        `on_commit` is handed to every worker (an HTTP API in this process passes its own)."""
        self.services = list(services)
        self.log_url = log_url
        self.db_url = db_url
        self.batch_size = batch_size
        self.on_commit = on_commit
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self.workers: list[Worker] = []

    def start(self) -> None:
        """Open the backends (errors surface here, before any thread starts), then run."""
        log = open_log(self.log_url)
        ensure_topics(log, self.services)
        log.close()
        for service in self.services:
            worker = Worker(
                service,
                open_log(self.log_url),
                open_store(self.db_url, service.name),
                batch_size=self.batch_size,
                on_commit=self.on_commit,
            )
            self.workers.append(worker)
            thread = threading.Thread(
                target=self._run, args=(worker,), name=f"worker-{service.name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _run(self, worker: Worker) -> None:
        try:
            worker.run(self.stop)
        except BaseException as exc:
            logger.exception("worker stopped on an error", extra={"service": worker.service.name})
            self.failures.append(exc)
            self.stop.set()
        finally:
            worker.store.close()
            worker.log.close()

    def readiness(self) -> dict[str, str]:
        """Per worker (`service#n`): "ok" while it runs its passes, else why it does not."""
        found: dict[str, str] = {}
        counts: dict[str, int] = {}
        for worker, thread in zip(self.workers, self._threads, strict=True):
            name = worker.service.name
            counts[name] = counts.get(name, 0) + 1
            reason = worker.unready if thread.is_alive() else "stopped"
            found[f"{name}#{counts[name]}"] = reason or "ok"
        return found

    def join(self, timeout: float | None = None) -> None:
        """Stop every worker after its current batch and wait for the threads."""
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout)


YOUNG_OBJECTS_PER_COLLECTION = 100_000
"""How many more container objects than freed the process allocates before the cyclic
garbage collector runs (its generation-0 threshold; Python's default is 700)."""


def freeze_startup_objects() -> None:
    """Hide every object alive now from the cyclic garbage collector, for good, and let it
    run once per many more allocations.

    Call it once a process that runs workers or serves the API has started them: the
    modules, models and services built at start-up (hundreds of thousands of objects) are
    never garbage, yet each full collection would walk them all again, and the passes
    allocate enough to run one every few hundred events. Frozen, a collection walks only
    what the passes allocated (`gc.freeze`); P1 drains about 15% faster for it.

    A pass holds its batch's objects (some 40 per event) until it ends, and refcounting
    frees them then, cycles aside. At the default threshold the collector ran every dozen
    events and walked the live batch each time, about 7% of a worker's time; at
    `YOUNG_OBJECTS_PER_COLLECTION` a batch of 1,000 events ends before it is due, and what
    cycles leave behind is still collected (CHANGELOG, Performance).
    """
    gc.freeze()
    young, *older = gc.get_threshold()
    if young:  # 0: the program turned automatic collection off; leave it so
        gc.set_threshold(max(young, YOUNG_OBJECTS_PER_COLLECTION), *older)
