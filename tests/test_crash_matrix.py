"""The crash matrix (PRODUCT.md §7, issue 8): workers SIGKILLed at every step boundary.

Real `loglane worker` processes run the landscape of tests/apps/matrix.py, several per service,
each started with `LOGLANE_CRASH` naming one step boundary (`loglane.faults`), so that it kills
itself with SIGKILL there before long. A supervisor restarts each worker that dies, giving the
new one the boundary that has the fewest kills and that no live worker holds, until every
boundary has LOGLANE_MATRIX_KILLS kills; later workers run without faults. The input is
appended in chunks paced by the kills, so they spread over the whole run; when the workers
have drained what they got while kills are still wanted, the oldest worker is stopped
cleanly, so that partitions move (assignment and revocation happen only then). The last
twentieth of the input is held back: should the rest drain before some boundary was met,
workers restarted for such a boundary die at the first pass that meets it, and the reserve
comes a piece at a time, so that there are passes to meet it in (a boundary of every pass
needs records to handle; assignment and revocation need only partitions to move). Once
every boundary was met the reserve comes whole. A watch thread samples the stored positions
and the log's committed offsets all the while. Once the input is drained and every worker
stopped:

- every view equals the fold of the input: per-key order held, nothing was applied twice or
  lost, and the rows all partitions share (per-region totals) are exact;
- every output event id is on `matrix_bank.out` (raw duplicates are counted, not failed) and
  `matrix_books` applied each exactly once;
- every poison record is in `matrix_bank.dlq` and nowhere else (no view row, no output, its
  request failed), no good record is there, and `matrix_books.dlq` is empty;
- stored positions never moved back, and the log's committed offset never led the store;
- no worker exited but by an injected SIGKILL, and every boundary was hit at least once.

It runs on two stacks: the embedded log with SQLite views, and Kafka with PostgreSQL views.
The run fails only when nothing progresses for LOGLANE_MATRIX_STALL seconds, never on a
wall-clock deadline. The environment sets the size:

    LOGLANE_MATRIX_COMMANDS  commands (default 10,000 embedded, 5,000 on Kafka; poison is
                             6 in every 1,000)
    LOGLANE_MATRIX_KEYS      accounts (default 200)
    LOGLANE_MATRIX_WORKERS   worker processes per service (default 3)
    LOGLANE_MATRIX_KILLS     kills wanted at each boundary (default 3 embedded, 2 on Kafka);
                             once a boundary has them, restarted workers crash elsewhere,
                             and at the end not at all
    LOGLANE_MATRIX_STALL     seconds without progress before the run fails (default 120)
    LOGLANE_MATRIX_POISON    the poison kinds to mix in, comma-separated (default: all of
                             tests.apps.matrix.POISON_KINDS)
    LOGLANE_MATRIX_SEED      the seed the input is drawn from (default 8)
    LOGLANE_MATRIX_REPORT    a file to append the run's counts to, one JSON line per stack

scripts/crash-matrix runs this very test at 100,000 commands over 1,000 keys.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loglane.envelope import COMMAND_SOURCE
from loglane.errors import BackendUnavailableError, ConfigurationError
from loglane.faults import STEPS, VARIABLE
from loglane.logs.base import Log
from loglane.records import Message, Record, TopicPartition
from loglane.service import Service
from loglane.stores.base import RequestStatus, Store
from loglane.urls import open_log, open_store
from loglane.views import View
from loglane.worker import ensure_topics
from tests.apps.matrix import (
    POISON_KINDS,
    SHARED,
    Fold,
    MatrixInput,
    bank,
    books,
    identity,
    landscape,
    matrix_input,
)
from tests.postgres import drop_schemas, unique_prefix, with_schema
from tests.processes import WorkerProcess, child_environment

pytestmark = pytest.mark.slow

COMMANDS = os.environ.get("LOGLANE_MATRIX_COMMANDS")
KEYS = int(os.environ.get("LOGLANE_MATRIX_KEYS", "200"))
WORKERS = int(os.environ.get("LOGLANE_MATRIX_WORKERS", "3"))
KILLS = os.environ.get("LOGLANE_MATRIX_KILLS")
STALL = float(os.environ.get("LOGLANE_MATRIX_STALL", "120"))
SEED = int(os.environ.get("LOGLANE_MATRIX_SEED", "8"))
REPORT = os.environ.get("LOGLANE_MATRIX_REPORT")
POISON = tuple(
    filter(None, os.environ.get("LOGLANE_MATRIX_POISON", ",".join(POISON_KINDS)).split(","))
)
BATCH_SIZE = 200
CRASH_LOOP = 10  # worker deaths not injected before the run gives up
EXTRA_MOVES = 30  # workers stopped after the input drained, to meet a boundary not yet met
RESERVE_PIECES = 10  # the input held back in case a boundary is not met before the rest drains

# The chance of dying each time a worker passes its boundary: high, so that kills come soon
# after a worker starts; LOGLANE_MATRIX_KILLS bounds how many there are. The per-pass steps
# come by several times a second; assignment and revocation only when partitions move.
CHANCES = {
    "after_poll": 0.1,
    "in_commit": 0.2,
    "after_commit": 0.1,
    "after_publish": 0.1,
    "after_log_commit": 0.1,
    "in_assign": 0.5,
    "in_revoke": 1.0,
}
assert set(CHANCES) == set(STEPS), "a new boundary in loglane.faults needs a chance here"
# The boundaries a worker meets only in a pass that handles records (and, for after_poll,
# in every pass); the others come when partitions move.
PER_PASS = ("after_poll", "in_commit", "after_commit", "after_publish", "after_log_commit")


@dataclass(frozen=True)
class MatrixStack:
    """A log and a store by URL, as the workers get them."""

    name: str
    folder: Path
    log_url: str
    db_url: str
    nul_is_poison: bool  # PostgreSQL refuses NUL in text and JSONB; SQLite stores it
    commands: int  # the CI size, unless LOGLANE_MATRIX_COMMANDS says otherwise
    kills: int  # kills wanted at each boundary, unless LOGLANE_MATRIX_KILLS says otherwise

    def log(self) -> Log:
        return open_log(self.log_url)

    def store(self, service: str) -> Store:
        return open_store(self.db_url, service)


@pytest.fixture(
    params=[
        "embedded+sqlite",
        pytest.param("kafka+postgresql", marks=[pytest.mark.kafka, pytest.mark.postgres]),
    ]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MatrixStack]:
    if request.param == "embedded+sqlite":
        yield MatrixStack(
            request.param,
            tmp_path,
            f"embedded:///{tmp_path}/log.db?session_timeout=1&heartbeat_interval=0.1"
            "&synchronous=normal",
            f"sqlite:///{tmp_path}/{{service}}.db",
            nul_is_poison=False,
            commands=int(COMMANDS or 10_000),
            kills=int(KILLS or 3),
        )
        return
    from tests.kafka_broker import Broker, delete_landscape

    broker: Broker = request.getfixturevalue("kafka_broker")
    postgres_url: str = request.getfixturevalue("postgres_url")
    delete_landscape(broker, list(landscape))
    prefix = unique_prefix()
    log_url = broker.url(
        connect_timeout=30,
        **{"consumer.session.timeout.ms": 3000, "consumer.heartbeat.interval.ms": 300},
    )
    yield MatrixStack(
        request.param,
        tmp_path,
        log_url,
        with_schema(postgres_url, prefix + "{service}"),
        nul_is_poison=True,
        # slower per command (rows every partition writes serialize the batches of all
        # worker processes) and per kill (a dead member holds its partitions for a session)
        commands=int(COMMANDS or 5_000),
        kills=int(KILLS or 2),
    )
    drop_schemas(postgres_url, prefix)


# -- worker processes --------------------------------------------------------------------------


class CrashingWorker(WorkerProcess):
    """`loglane worker` for one service, with `LOGLANE_CRASH` set to one boundary (or none)."""

    def __init__(
        self, stack: MatrixStack, service: Service, step: str | None, *, certain: bool = False
    ) -> None:
        """`certain`: the worker dies the first time it passes `step`."""
        self.service = service.name
        self.step = step
        self.certain = certain
        self.retired = False
        self.started = time.monotonic()
        env = child_environment()
        env.pop(VARIABLE, None)  # a worker without a boundary runs without faults
        if step is not None:
            env[VARIABLE] = f"{step}:{1.0 if certain else CHANCES[step]}"
        super().__init__(
            stack,
            "worker",
            "tests.apps.matrix:landscape",
            "--service",
            service.name,
            "--batch-size",
            str(BATCH_SIZE),
            "--log-format",
            "json",
            name=f"{service.name}-{step}",
            env=env,
        )

    def last_words(self) -> str:
        """The exception the worker died of, or else its last line (its log is JSON lines)."""
        last = ""
        for line in self.output.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                last = line or last
                continue
            if "exception" in entry:
                # the first unindented line after the last frame: "module.Error: what"
                lines = str(entry["exception"]).strip().splitlines()
                frame = max(
                    (i for i, text in enumerate(lines) if text.startswith("  File ")), default=-1
                )
                raised = [text for text in lines[frame + 1 :] if not text.startswith(" ")]
                return (raised or lines)[0][:300]
            last = str(entry.get("message", line))
        return last[:300]


@dataclass
class Supervisor:
    """Keeps WORKERS processes of each service running; counts how and where they died."""

    stack: MatrixStack
    kills_wanted: int
    workers: list[CrashingWorker] = field(default_factory=list)
    runs: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    exits: list[str] = field(default_factory=list)  # deaths that were not injected
    retired: int = 0  # workers stopped with SIGTERM to move partitions
    # once the input but its reserve drained: workers started for a boundary not met yet
    # die the first time they pass it
    certain: bool = False

    def start(self, per_service: int) -> None:
        for _ in range(per_service):
            for service in landscape:
                self.workers.append(self._start(service))

    def retire_oldest(self) -> None:
        """Stop the longest-running worker with SIGTERM; it is restarted like the dead."""
        live = [w for w in self.workers if w.process.poll() is None and not w.retired]
        if live:
            oldest = min(live, key=lambda worker: worker.started)
            oldest.retired = True
            oldest.process.send_signal(signal.SIGTERM)

    def unmet(self) -> list[str]:
        """The boundaries no worker was killed at yet."""
        return [step for step in STEPS if not self.kills[step]]

    def meet(self, step: str) -> None:
        """Unless a live worker is certain to die at `step`, stop one cleanly, so that its
        restart is: the one that has the boundary, else the oldest of a service that passes
        it."""
        if any(worker.retired for worker in self.workers):
            return  # its restart comes first
        live = [w for w in self.workers if w.process.poll() is None]
        if any(worker.step == step and worker.certain for worker in live):
            return
        able = [w for w in live if step != "after_publish" or w.service == bank.name]
        holders = [worker for worker in able if worker.step == step]
        if holders or able:
            worker = min(holders or able, key=lambda worker: worker.started)
            worker.retired = True
            worker.process.send_signal(signal.SIGTERM)

    def kills_met(self) -> bool:
        return all(self.kills[step] >= self.kills_wanted for step in STEPS)

    def _next_step(self, service: Service) -> str | None:
        """The boundary with the fewest kills that still wants some, one no live worker
        has if possible, else none: the run then winds down without crashes."""
        wanting = [step for step in STEPS if self.kills[step] < self.kills_wanted]
        if service is books:  # it emits nothing, so it never publishes
            wanting = [step for step in wanting if step != "after_publish"]
        if not wanting:
            return None
        live = Counter(w.step for w in self.workers if w.process.poll() is None)
        return min(wanting, key=lambda step: (live[step], self.kills[step], STEPS.index(step)))

    def _start(self, service: Service) -> CrashingWorker:
        self.runs += 1
        step = self._next_step(service)
        certain = self.certain and step is not None and not self.kills[step]
        return CrashingWorker(self.stack, service, step, certain=certain)

    def restart_the_dead(self) -> None:
        """Replace every worker that died, counting what killed it."""
        for index, worker in enumerate(self.workers):
            code = worker.process.poll()
            if code is None:
                continue
            if code == -signal.SIGKILL and worker.step is not None:
                self.kills[worker.step] += 1
            elif worker.retired and code in (0, -signal.SIGTERM):
                self.retired += 1
            else:
                self.exits.append(f"{worker.service} exited {code}: {worker.last_words()}")
            self.workers[index] = self._start(landscape.service(worker.service))

    def stop(self) -> None:
        """SIGTERM every worker and wait; a kill on the way out (in_revoke) is no matter."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                code = worker.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = -signal.SIGKILL
                self.exits.append(f"{worker.service} did not stop within 60 s")
            if code not in (0, -signal.SIGKILL, -signal.SIGTERM):  # TERM: before its handler
                self.exits.append(f"{worker.service} stopped with {code}: {worker.last_words()}")


# -- reading the stack -------------------------------------------------------------------------


def read_topic(log: Log, topic: str) -> list[Record]:
    records: list[Record] = []
    for partition, offsets in sorted(log.offsets(topic).items()):
        tp = TopicPartition(topic, partition)
        start = offsets.start
        while start < offsets.end and (chunk := log.read(tp, start, 2000)):
            records.extend(chunk)
            start = chunk[-1].offset + 1
    return records


def all_rows(store: Store, view: View[Any]) -> dict[Any, Any]:
    rows: dict[Any, Any] = {}
    after = None
    while page := store.query(view, after=after, limit=1000):
        for row in page:
            rows[view.key_of(row)] = row
        after = view.key_of(page[-1])
    return rows


@dataclass
class Lag:
    """Where each service stands against the log: behind which partitions, what moves."""

    behind: list[str]
    outbox: int
    marker: tuple[int, ...]  # changes whenever anything progresses

    @property
    def drained(self) -> bool:
        return not self.behind and not self.outbox


def measure(stack: MatrixStack) -> Lag:
    log = stack.log()
    behind: list[str] = []
    outbox = 0
    marker: list[int] = []
    try:
        for service in landscape:
            store = stack.store(service.name)
            try:
                positions = store.positions(service.name)
                backlog = sum(store.outbox_backlog(service.name).values())
            finally:
                store.close()
            outbox += backlog
            marker += [sum(positions.values()), backlog]
            for topic in (*service.topics, service.dlq_topic):
                for partition, offsets in sorted(log.offsets(topic).items()):
                    marker.append(offsets.end)
                    tp = TopicPartition(topic, partition)
                    if topic in service.topics and positions.get(tp, 0) < offsets.end:
                        behind.append(
                            f"{service.name}: {tp} at {positions.get(tp, 0)} of {offsets.end}"
                        )
    finally:
        log.close()
    return Lag(behind, outbox, tuple(marker))


@dataclass
class Watch:
    """Samples stored positions and committed offsets while the run goes (a thread).

    It records each time a stored position moves back, or a committed offset is ahead of
    the stored position (the log must trail the store).
    """

    stack: MatrixStack
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    _highest: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        log = self.stack.log()
        stores = {service.name: self.stack.store(service.name) for service in landscape}
        try:
            while not self._stop.wait(0.02):
                try:
                    self.sample(log, stores)
                except BackendUnavailableError:
                    continue  # a slow admin request; the next sample tries again
        finally:
            for store in stores.values():
                store.close()
            log.close()

    def sample(self, log: Log, stores: dict[str, Store]) -> None:
        for service in landscape:
            # committed offsets first: the worker commits the log after the store, so a
            # commit after this read cannot pass the stored position read next
            committed = {
                TopicPartition(topic, partition): offset
                for topic in service.topics
                for partition, offset in _committed(log, service.name, topic).items()
            }
            stored = stores[service.name].positions(service.name)
            for tp, offset in stored.items():
                highest = self._highest.get((service.name, tp), 0)
                if offset < highest:
                    self.violations.append(f"{service.name}: {tp} moved back {highest} -> {offset}")
                self._highest[service.name, tp] = max(offset, highest)
            for tp, offset in committed.items():
                if offset > stored.get(tp, 0):
                    self.violations.append(
                        f"{service.name}: {tp} committed {offset} > stored {stored.get(tp, 0)}"
                    )
        self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)


def _committed(log: Log, group: str, topic: str) -> dict[int, int]:
    try:
        return log.committed(group, topic)
    except ConfigurationError:  # the topic may not exist yet
        return {}


# -- the run -----------------------------------------------------------------------------------


class Feeder:
    """Appends the input in chunks, paced by the kills.

    A chunk is due for every so many kills, so the kills spread over the whole input rather
    than the input draining before the workers died a few times; while the landscape has
    drained what it got, the next chunk comes anyway, so the pace never stalls the run.
    """

    def __init__(self, stack: MatrixStack, data: MatrixInput, kills_wanted: int) -> None:
        self.log = stack.log()
        self.chunks = max(1, len(STEPS) * kills_wanted * 2)
        cut = len(data.messages) - len(data.messages) // 20  # a twentieth held back
        main, reserve = data.messages[:cut], data.messages[cut:]
        self._pending = _pieces(main, self.chunks)
        self.reserve = _pieces(reserve, RESERVE_PIECES)
        self.fed = 0  # chunks appended, the reserve's pieces included

    @property
    def done(self) -> bool:
        """Whether all the input but the reserve was appended."""
        return self.fed >= len(self._pending)

    def feed_reserve(self, *, whole: bool = False) -> None:
        """Append the next piece of the reserve, or all of it."""
        pieces, self.reserve = (self.reserve, []) if whole else (self.reserve[:1], self.reserve[1:])
        for piece in pieces:
            self.log.append(piece)
            self.fed += 1

    def feed(self, supervisor: Supervisor, drained: bool) -> bool:
        """Append the next chunk if it is due, or if the landscape has drained what it got;
        return whether the kills are behind the pace."""
        if self.done:
            return False
        kills_wanted = len(STEPS) * supervisor.kills_wanted
        kills = min(kills_wanted, sum(supervisor.kills.values()))
        due = supervisor.kills_met() or self.fed <= kills * self.chunks // max(1, kills_wanted)
        if due or drained:
            self.log.append(self._pending[self.fed])
            self.fed += 1
        return not due

    def close(self) -> None:
        self.log.close()


def _pieces(messages: list[Message], count: int) -> list[list[Message]]:
    """`messages` cut in `count` pieces (the last may be shorter), or fewer if they are few."""
    size = max(1, -(-len(messages) // count))
    return [messages[i : i + size] for i in range(0, len(messages), size)]


def supervise(stack: MatrixStack, feeder: Feeder, supervisor: Supervisor) -> str | None:
    """Feed, and restart dead workers, until the input is drained; None, or why it stalled."""
    progress: tuple[object, ...] = ()
    moved_at = time.monotonic()
    pause = threading.Event()
    extra_moves = 0
    moved_partitions_at = 0.0
    while True:
        supervisor.restart_the_dead()
        lag = measure(stack)
        if feeder.done and lag.drained:
            unmet = supervisor.unmet()
            if not unmet or extra_moves >= EXTRA_MOVES:
                if not feeder.reserve:
                    return None
                feeder.feed_reserve(whole=True)
            elif time.monotonic() - moved_partitions_at > 2.0:
                # the input but its reserve ran out before some boundary was met: restart
                # workers certain to die at a boundary of every pass, and feed them a piece
                # of the reserve to pass it with; for the others, move partitions by
                # stopping the oldest worker
                supervisor.certain = True
                per_pass = [step for step in unmet if step in PER_PASS]
                if per_pass and feeder.reserve:
                    for step in per_pass:
                        supervisor.meet(step)
                    feeder.feed_reserve()
                else:
                    supervisor.retire_oldest()
                extra_moves += 1
                moved_partitions_at = time.monotonic()
        if feeder.feed(supervisor, lag.drained) and lag.drained:
            # idle workers pass few boundaries, and partitions move only when members come
            # and go: stop the oldest worker cleanly, and the restart joins a new one
            supervisor.retire_oldest()
        if len(supervisor.exits) >= CRASH_LOOP:
            # a worker that dies of an error dies of it again at once: no need to wait
            exits = Counter(supervisor.exits)
            return f"workers keep dying: {exits.most_common(3)}; behind: {lag.behind[:8]}"
        now = (lag.marker, feeder.fed, sum(supervisor.kills.values()), extra_moves)
        if now != progress:
            progress, moved_at = now, time.monotonic()
        elif time.monotonic() - moved_at > STALL:
            exits = Counter(supervisor.exits)
            return (
                f"nothing progressed for {STALL:g} s; behind: {lag.behind[:8]}, "
                f"outbox {lag.outbox}; worker exits not injected: {exits.most_common(3)}"
            )
        pause.wait(0.1)


# -- the checks --------------------------------------------------------------------------------


def check_views(stack: MatrixStack, fold: Fold) -> list[str]:
    problems: list[str] = []
    for service in landscape:
        store = stack.store(service.name)
        try:
            for view in service.views.values():
                expected = fold.rows[view]
                found = all_rows(store, view)
                wrong = sorted(key for key in expected if found.get(key) != expected[key])
                extra = sorted(set(found) - set(expected))
                what = f"{service.name}.{view.name}"
                if view in SHARED:
                    what += " (rows every partition writes)"
                if wrong:
                    key = wrong[0]
                    problems.append(
                        f"{what}: {len(wrong)} of {len(expected)} rows are not the fold of the "
                        f"input, e.g. {key!r}: {found.get(key)!r}, folded {expected[key]!r}"
                    )
                if extra:
                    problems.append(
                        f"{what}: {len(extra)} rows the input does not make: {extra[:3]}"
                    )
        finally:
            store.close()
    return problems


def check_outputs(log: Log, fold: Fold, counts: dict[str, Any]) -> list[str]:
    ids = Counter(dict(r.headers)["ce_id"].decode() for r in read_topic(log, bank.output_topic))
    counts["output_records"] = sum(ids.values())
    counts["output_duplicates"] = sum(ids.values()) - len(ids)
    problems: list[str] = []
    missing = fold.outputs - set(ids)
    unexpected = set(ids) - fold.outputs
    if missing:
        problems.append(
            f"{bank.output_topic}: {len(missing)} output ids missing, e.g. {min(missing)}"
        )
    if unexpected:
        problems.append(f"{bank.output_topic}: {len(unexpected)} ids the input does not make")
    return problems


def check_dlq(log: Log, fold: Fold, counts: dict[str, Any]) -> list[str]:
    letters = Counter(identity(record) for record in read_topic(log, bank.dlq_topic))
    counts["dlq_records"] = sum(letters.values())
    counts["dlq_duplicates"] = sum(letters.values()) - len(letters)
    problems: list[str] = []
    missing = Counter(fold.poison[i] for i in set(fold.poison) - set(letters))
    if missing:
        problems.append(f"{bank.dlq_topic}: poison missing, by kind: {dict(missing)}")
    good = set(letters) - set(fold.poison)
    if good:
        problems.append(
            f"{bank.dlq_topic}: {len(good)} good records dead-lettered, e.g. {min(good)}"
        )
    downstream = read_topic(log, books.dlq_topic)
    if downstream:
        errors = Counter(
            dict(r.headers).get("loglane_error", b"?").decode()[:120] for r in downstream
        )
        problems.append(f"{books.dlq_topic}: {len(downstream)} records: {errors.most_common(2)}")
    return problems


def check_requests(stack: MatrixStack, fold: Fold) -> list[str]:
    """Good commands ended done, poison commands failed (by the source that posted them)."""
    wanted = [(RequestStatus.DONE, COMMAND_SOURCE, rid) for rid in fold.done]
    wanted += [(RequestStatus.FAILED, source, rid) for source, rid in fold.failed]
    store = stack.store(bank.name)
    try:
        outcomes = {
            (source, rid): outcome
            for source in {source for _, source, _ in wanted}
            for rid, outcome in store.requests(
                bank.name, [rid for _, s, rid in wanted if s == source], source=source
            ).items()
        }
    finally:
        store.close()
    wrong: dict[str, Counter[str]] = {}
    for status, source, rid in wanted:
        outcome = outcomes.get((source, rid))
        if outcome is None or outcome.status != status:
            found = "unknown" if outcome is None else outcome.status.value
            wrong.setdefault(status.value, Counter())[found] += 1
    return [f"requests that should be {status}: {dict(found)}" for status, found in wrong.items()]


def report(counts: dict[str, Any]) -> None:
    line = json.dumps(counts, sort_keys=True)
    print(f"crash-matrix {line}")
    if REPORT:
        with open(REPORT, "a") as sink:
            sink.write(line + "\n")


def test_workers_killed_at_every_step_boundary_leave_views_outputs_and_dlq_exact(
    stack: MatrixStack,
) -> None:
    data = matrix_input(
        stack.commands, KEYS, nul_is_poison=stack.nul_is_poison, poison=POISON, seed=SEED
    )
    log = stack.log()
    ensure_topics(log, list(landscape))
    log.close()
    started = time.monotonic()
    supervisor = Supervisor(stack, stack.kills)
    watch = Watch(stack)
    watch.start()
    supervisor.start(WORKERS)
    feeder = Feeder(stack, data, stack.kills)
    try:
        stalled = supervise(stack, feeder, supervisor)
    finally:
        supervisor.stop()
        watch.stop()
        feeder.close()
    counts: dict[str, Any] = {
        "stack": stack.name,
        "commands": stack.commands,
        "keys": KEYS,
        "seed": SEED,
        "kinds": data.kinds,
        "poison": len(data.fold.poison),
        "workers_per_service": WORKERS,
        "runs": supervisor.runs,
        "kills": {step: supervisor.kills[step] for step in STEPS},
        "exits_not_injected": len(supervisor.exits),
        "retired": supervisor.retired,
        "samples": watch.samples,
        "seconds": round(time.monotonic() - started, 1),
    }
    problems = [stalled] if stalled else []
    if not stalled:
        log = stack.log()
        stores = {service.name: stack.store(service.name) for service in landscape}
        try:
            watch.sample(log, stores)  # the last word, after every worker stopped
            problems += check_views(stack, data.fold)
            problems += check_outputs(log, data.fold, counts)
            problems += check_dlq(log, data.fold, counts)
            problems += check_requests(stack, data.fold)
        finally:
            for store in stores.values():
                store.close()
            log.close()
    if watch.violations:
        problems.append(f"{len(watch.violations)} position violations: {watch.violations[:5]}")
    if supervisor.exits and not stalled:
        exits = Counter(supervisor.exits)
        problems.append(
            f"{len(supervisor.exits)} worker exits not injected: {exits.most_common(3)}"
        )
    unhit = supervisor.unmet()
    if unhit and not stalled:
        problems.append(f"no worker was killed at {unhit}: the run did not exercise them")
    counts["problems"] = problems
    report(counts)
    assert not problems, "\n".join(problems)
