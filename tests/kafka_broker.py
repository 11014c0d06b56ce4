"""The Apache Kafka broker behind the `kafka` tests (a pytest plugin, see tests/conftest.py).

The session starts a single-node broker with `scripts/kafka start` on 127.0.0.1, on empty
storage, and stops it at the end; a broker that already runs there is used as it is and left
running. With LOGLANE_KAFKA=host:port the tests use that broker instead. A failing test that
used a broker gets the tail of its log in the report.

Every port a session's brokers use is derived from LOGLANE_KAFKA_PORT (default 19092), so
sessions with ports 4 apart never touch each other's brokers:

    base, base + 1        the shared broker: clients, controller
    base + 2, base + 3    the chaos tests' own broker, which they stop and start
    base + 4 ... base + 9 the three-node cluster of the `tests/cluster` tests, which kill and
                          restart its nodes (sessions that start it need ports 10 apart)
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from loglane.service import Service
from tests.conftest import announce, eventually

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka"
_LOG_TAIL_LINES = 80
PORTS_PER_BROKER = 2  # clients, controller
CLUSTER_NODES = (1, 2, 3)


@dataclass(frozen=True)
class Broker:
    """A running broker: its address and, when this project started it, its log file."""

    bootstrap: str
    log_file: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def url(self, **options: str | int) -> str:
        """A `kafka://` URL for this broker; librdkafka settings go in as `**{"a.b": v}`."""
        query = urlencode({name: str(value) for name, value in options.items()})
        return f"kafka://{self.bootstrap}" + (f"?{query}" if query else "")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        if self.log_file is None or not self.log_file.exists():
            return "(the broker's log is not on this machine)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def admin(broker: Broker) -> AdminClient:
    """An admin client for test set-up; librdkafka's own log is silenced.

    Keep a reference while its futures are pending: a collected client never completes them.
    """
    return AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})


def delete_landscape(broker: Broker, services: list[Service]) -> None:
    """Delete the services' topics and consumer groups, so a test starts from an empty log.

    For tests of landscapes whose topic names are fixed (`customers.in`, ...).
    """
    client = admin(broker)
    names = {t for s in services for t in (s.input_topic, s.output_topic, s.dlq_topic)}
    doomed = sorted(names & set(client.list_topics(timeout=30).topics))
    if doomed:
        for future in client.delete_topics(doomed, operation_timeout=30).values():
            future.result()

    def groups_deleted() -> bool:
        listed = client.list_consumer_groups(request_timeout=30).result()
        groups = sorted({s.name for s in services} & {g.group_id for g in listed.valid})
        if not groups:
            return True
        for future in client.delete_consumer_groups(groups, request_timeout=30).values():
            try:
                future.result()
            except KafkaException as exc:
                # a member that left uncleanly stays until its session times out
                if exc.args[0].code() != KafkaError.NON_EMPTY_GROUP:
                    raise
                return False
        return True

    eventually(groups_deleted, step=0.2, message="the consumer groups are deleted")
    eventually(
        lambda: not names & set(client.list_topics(timeout=30).topics),
        message="the deleted topics are gone",
    )


def run_script(command: str, env: dict[str, str] | None = None) -> str:
    """Run `scripts/kafka COMMAND`; fail with its output if it fails."""
    done = subprocess.run(
        [str(SCRIPT), command],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/kafka {command} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def is_running(env: dict[str, str] | None = None) -> bool:
    done = subprocess.run(
        [str(SCRIPT), "status"],
        env={**os.environ, **(env or {})},
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@dataclass
class ManagedBroker:
    """A broker of our own, listening for clients on `port` and for its controller on the next
    port (both set, so neither comes from the caller's environment)."""

    port: int
    env: dict[str, str] = field(init=False)

    @classmethod
    def numbered(cls, index: int) -> ManagedBroker:
        """The session's broker `index` (0 is the shared one), on ports from LOGLANE_KAFKA_PORT."""
        base = int(os.environ.get("LOGLANE_KAFKA_PORT", "19092"))
        return cls(base + index * PORTS_PER_BROKER)

    def __post_init__(self) -> None:
        self.env = {
            "LOGLANE_KAFKA_PORT": str(self.port),
            "LOGLANE_KAFKA_CONTROLLER_PORT": str(self.port + 1),
        }

    def start(self) -> Broker:
        run_script("start", self.env)
        return self.broker()

    def stop(self) -> None:
        run_script("stop", self.env)

    def reset(self) -> None:
        run_script("reset", self.env)

    def broker(self) -> Broker:
        return Broker(
            f"127.0.0.1:{self.port}", Path(run_script("logfile", self.env)), dict(self.env)
        )


@dataclass
class ManagedCluster:
    """Three nodes of our own (`scripts/kafka cluster`), each a broker and a controller;
    node N listens for clients on `port + 2(N-1)` and for controllers on the next port, and
    keeps its data under `folder`. Node N is broker id N in the cluster's metadata."""

    port: int
    folder: Path
    env: dict[str, str] = field(init=False)

    @classmethod
    def after_brokers(cls, folder: Path) -> ManagedCluster:
        """The session's cluster, on the six ports after its two brokers' (see above)."""
        base = int(os.environ.get("LOGLANE_KAFKA_PORT", "19092"))
        return cls(base + 2 * PORTS_PER_BROKER, folder)

    def __post_init__(self) -> None:
        self.env = {
            "LOGLANE_KAFKA_PORT": str(self.port),
            "LOGLANE_KAFKA_CLUSTER_DIR": str(self.folder),
        }

    def _script(self, *command: str) -> str:
        """Run `scripts/kafka cluster COMMAND...`; fail with its output if it fails."""
        done = subprocess.run(
            [str(SCRIPT), "cluster", *command],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"scripts/kafka cluster {' '.join(command)} failed:\n{done.stdout}{done.stderr}"
            )
        return done.stdout.strip()

    def start(self) -> Broker:
        """Start every node that is not running; wait until all answer."""
        self._script("start")
        return self.broker()

    def stop(self) -> None:
        self._script("stop")

    def reset(self) -> None:
        """Kill every node and delete the cluster's data."""
        self._script("reset")

    def kill(self, node: int) -> None:
        """SIGKILL node `node`; return once its process is gone."""
        self._script("kill", str(node))

    def restart(self, node: int) -> None:
        """Start a killed node again; return once it answers."""
        self._script("restart", str(node))

    def broker(self) -> Broker:
        """The cluster as clients see it: all three addresses; the log is node 1's."""
        return Broker(self._script("bootstrap"), Path(self._script("logfile", "1")), dict(self.env))

    def log_tails(self, lines: int = 30) -> str:
        tails = []
        for node in CLUSTER_NODES:
            log = Path(self._script("logfile", str(node)))
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            tails.append(f"--- node {node} ({log})\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(tails)


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The shared broker every `kafka` test talks to."""
    address = os.environ.get("LOGLANE_KAFKA")
    if address:
        yield Broker(address)
        return
    managed = ManagedBroker.numbered(0)
    where = f"127.0.0.1:{managed.port}"
    if is_running(managed.env):
        announce(request.config, f"Kafka: using the broker already running on {where}")
        yield managed.broker()
        return
    announce(request.config, f"Kafka: starting a broker on {where} (scripts/kafka start) ...")
    started = time.monotonic()
    managed.reset()  # no topics left over from earlier sessions
    broker = managed.start()
    announce(request.config, f"Kafka: ready in {time.monotonic() - started:.1f} s")
    try:
        yield broker
    finally:
        managed.stop()
        announce(request.config, "Kafka: stopped the broker this session started")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        brokers: dict[str, Broker] = {}
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ManagedBroker):
                value = value.broker()
            if isinstance(value, Broker):
                brokers[value.bootstrap] = value
        for broker in brokers.values():
            report.sections.append((f"kafka broker log {broker.bootstrap}", broker.log_tail()))
    return report
