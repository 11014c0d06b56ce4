"""What `pip install loglane` brings, and the container files: the image and compose.yaml.

The wheel is built once per session, and installed alone (no extra) into a fresh virtual
environment, as a user would: from the package index, or from the pins of
ci/lowest-constraints.txt when PIP_CONSTRAINT names them (ci/lowest does).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from loglane.examples import shop
from loglane.settings import Settings, variable
from tests.kafka_broker import Broker, delete_landscape
from tests.postgres import schemas, with_schema
from tests.processes import ROOT, api_process, child_environment

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = ROOT / "src" / "loglane"
# Imported by Loglane, installed by a dependency that guarantees them: pydantic's own core,
# FastAPI's Starlette (whose classes FastAPI re-exports and documents), psycopg[pool]'s pool.
COMES_WITH = {"pydantic-core": "pydantic", "starlette": "fastapi", "psycopg-pool": "psycopg"}
# The modules that need the clients of an extra; no other module may import those clients.
BACKENDS = {"loglane.logs.kafka", "loglane.stores.postgres"}
EXTRA_CLIENTS = ("confluent_kafka", "psycopg", "psycopg_pool")


@dataclass(frozen=True)
class Environment:
    """A virtual environment with only the wheel of Loglane installed, and its packages."""

    folder: Path

    @property
    def bin(self) -> Path:
        return self.folder / "bin"

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `args[0]` from this environment's bin, with `env` added to `environ()`."""
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**self.environ(), **(env or {})},
        )

    def environ(self) -> dict[str, str]:
        """This process's environment (proxies, PIP_CONSTRAINT), with this venv first on PATH
        and nothing that would import this checkout's sources."""
        kept = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
        return {**kept, "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}

    def packages(self) -> set[str]:
        listed = self.run("python", "-m", "pip", "list", "--format=freeze", cwd=self.folder)
        assert listed.returncode == 0, listed.stderr
        return {canonicalize_name(line.split("==")[0]) for line in listed.stdout.splitlines()}


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Loglane's wheel, built from this checkout once per session."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out.glob("loglane-*.whl")
    return found


@pytest.fixture(scope="session")
def core_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Environment:
    """A fresh environment where `pip install loglane` (the wheel, no extra) ran."""
    environment = Environment(tmp_path_factory.mktemp("core") / "venv")
    venv.create(environment.folder, with_pip=True)
    installed = environment.run(
        "python", "-m", "pip", "install", "--disable-pip-version-check", str(wheel), cwd=ROOT
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return environment


@pytest.fixture(scope="session")
def kafka_postgres_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Environment:
    """A fresh environment where `pip install 'loglane[kafka,postgres]'` ran."""
    environment = Environment(tmp_path_factory.mktemp("kafka-postgres") / "venv")
    venv.create(environment.folder, with_pip=True)
    installed = environment.run(
        "python", "-m", "pip", "install", "--disable-pip-version-check",
        f"{wheel}[kafka,postgres]", cwd=ROOT,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return environment


def requirements(*extras: str) -> set[str]:
    """The distributions the core (and `extras`) require, by canonical name."""
    listed = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        listed += PYPROJECT["project"]["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(line).name) for line in listed}


def imported_names(path: Path) -> Iterator[str]:
    """The top-level names of the modules `path` imports, at any depth of its code."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


@pytest.mark.slow
def test_the_core_install_has_no_kafka_or_postgres_client_and_runs_the_demo(
    core_install: Environment, tmp_path: Path
) -> None:
    packages = core_install.packages()
    unwanted = {"confluent-kafka", "psycopg", "psycopg-binary", "psycopg-pool"}
    # uvicorn[standard]'s extras that Loglane does not use (python-dotenv stays: pydantic-settings
    # requires it)
    unwanted |= {"watchfiles", "websockets", "pyyaml"}
    assert packages & unwanted == set()
    assert {"loglane", "uvicorn", "httptools", "uvloop", "pydantic-settings"} <= packages
    demo = core_install.run("loglane", "demo", "--no-serve", "--commands", "50", cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "50 commands handled" in demo.stdout


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
def test_with_the_kafka_and_postgres_extras_the_shop_runs_on_kafka_and_postgresql(
    kafka_postgres_install: Environment, kafka_broker: Broker, postgres_url: str, tmp_path: Path
) -> None:
    delete_landscape(kafka_broker, list(shop.landscape))
    with schemas(postgres_url) as prefix:
        environment = {
            "LOGLANE_APP": shop.__name__,
            "LOGLANE_LOG": kafka_broker.url(**{"consumer.session.timeout.ms": 6000}),
            "LOGLANE_DB": with_schema(postgres_url, prefix + "{service}"),
        }
        output = tmp_path / "run.log"
        with output.open("w") as sink:
            workers = subprocess.Popen(
                [str(kafka_postgres_install.bin / "loglane"), "run", "--no-api"],
                cwd=tmp_path,
                env={**kafka_postgres_install.environ(), **environment},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            customer = '{"customer_id": "ada", "name": "Ada Lovelace"}'
            order = '{"order_id": "o1", "customer_id": "ada", "amount_cents": 4200}'
            for command, body in (("CreateCustomer", customer), ("PlaceOrder", order)):
                sent = kafka_postgres_install.run(
                    "loglane", "send", shop.__name__, command, body, "--wait", "120",
                    cwd=tmp_path, env=environment,
                )  # fmt: skip
                assert sent.returncode == 0, sent.stdout + sent.stderr + output.read_text()
            row = kafka_postgres_install.run(
                "loglane", "get", shop.__name__, "orders", "o1", cwd=tmp_path, env=environment
            )
            assert row.returncode == 0, row.stderr
            assert json.loads(row.stdout)["amount_cents"] == 4200
        finally:
            workers.terminate()
            assert workers.wait(timeout=60) == 0, output.read_text()
    delete_landscape(kafka_broker, list(shop.landscape))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "url", "says"),
    [
        (
            "--log",
            "kafka://127.0.0.1:9",
            "kafka:// needs the Kafka client: pip install 'loglane[kafka]'",
        ),
        (
            "--db",
            "postgresql://127.0.0.1:9/db",
            "postgresql:// needs the PostgreSQL driver: pip install 'loglane[postgres]'",
        ),
    ],
)
def test_a_url_that_needs_a_missing_extra_names_it_in_one_line(
    core_install: Environment, tmp_path: Path, option: str, url: str, says: str
) -> None:
    result = core_install.run(
        "loglane",
        "worker",
        "loglane.examples.shop",
        "--service",
        "customers",
        option,
        url,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {says}\n"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "--log=kafka://127.0.0.1:9",
            "kafka:// needs the Kafka client: pip install 'loglane[kafka]'",
        ),
        (
            "--db=postgres://127.0.0.1:9/db",
            "postgres:// needs the PostgreSQL driver: pip install 'loglane[postgres]'",
        ),
    ],
)
def test_a_missing_client_is_one_line_naming_its_extra(tmp_path: Path, url: str, says: str) -> None:
    blocked = ", ".join(f"{name!r}: None" for name in EXTRA_CLIENTS)
    script = (
        f"import sys; sys.modules.update({{{blocked}}}); sys.argv[0] = 'loglane'; "
        "from loglane.cli import main; main()"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "worker",
            "loglane.examples.shop",
            "--service",
            "orders",
            url,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {says}\n"


def test_no_core_module_imports_a_client_of_an_extra() -> None:
    modules = sorted(
        "loglane." + ".".join(path.relative_to(SOURCES).with_suffix("").parts)
        for path in SOURCES.rglob("*.py")
        if path.name != "__main__.py"
    )
    core = [
        name.removesuffix(".__init__")
        for name in modules
        if name not in BACKENDS
        and not name.startswith(("loglane.stores._postgres", "loglane.logs._kafka"))
    ]
    blocked = ", ".join(f"{name!r}: None" for name in EXTRA_CLIENTS)
    script = f"import importlib, sys; sys.modules.update({{{blocked}}})\n" + "".join(
        f"importlib.import_module({name!r})\n" for name in core
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert len(core) > 40


def test_every_package_loglane_imports_is_a_declared_dependency() -> None:
    declared = requirements(*PYPROJECT["project"]["optional-dependencies"]) | set(COMES_WITH)
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for path in SOURCES.rglob("*.py"):
        for name in set(imported_names(path)) - set(sys.stdlib_module_names) - {"loglane"}:
            providers = {canonicalize_name(d) for d in distributions.get(name, [name])}
            if not providers & declared:
                undeclared[name] = str(path.relative_to(ROOT))
    assert undeclared == {}


def test_the_clients_of_the_extras_are_no_core_dependency() -> None:
    core = requirements()
    assert core & {"confluent-kafka", "psycopg", "opentelemetry-sdk"} == set()
    assert requirements("kafka") - core == {"confluent-kafka"}
    assert requirements("postgres") - core == {"psycopg"}
    dev = PYPROJECT["project"]["optional-dependencies"]["dev"]
    assert "loglane[kafka,postgres,otel]" in dev


def test_every_floor_is_pinned_in_the_lowest_constraints() -> None:
    pins = {}
    for line in (ROOT / "ci" / "lowest-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (pin,) = (spec.version for spec in requirement.specifier if spec.operator == "==")
            pins[canonicalize_name(requirement.name)] = Version(pin)
    listed = list(PYPROJECT["project"]["dependencies"])
    for extra in ("kafka", "postgres", "otel"):
        listed += PYPROJECT["project"]["optional-dependencies"][extra]
    floors = {}
    for line in listed:
        requirement = Requirement(line)
        (floor,) = (spec.version for spec in requirement.specifier if spec.operator == ">=")
        floors[canonicalize_name(requirement.name)] = Version(floor)
    assert {name: pins.get(name) for name in floors} == floors


# The container image and compose.yaml. No Docker engine runs here, so scripts/check lints
# them (hadolint, dclint); these tests hold them to Loglane itself.


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), stage by stage."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line.strip())
    return stages


def compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load((ROOT / "compose.yaml").read_text())[
        "services"
    ]
    return services


def app_containers() -> dict[str, dict[str, object]]:
    """The compose services that run `loglane`."""
    return {
        name: service
        for name, service in compose().items()
        if isinstance(service.get("command"), list) and service["command"][0] == "loglane"  # type: ignore[index]
    }


def test_the_image_is_built_in_one_stage_and_run_from_another_as_a_user() -> None:
    *builds, run = dockerfile_stages()
    assert builds, "a build stage"
    assert any(line.startswith("COPY --from=build ") for line in run)
    (user,) = [line.split()[1] for line in run if line.startswith("USER ")]
    assert user.split(":")[0] not in {"root", "0"}
    (health,) = [line for line in run if line.startswith("HEALTHCHECK ")]
    assert "/healthz" in health
    assert run[-1] == 'CMD ["loglane", "api"]'


def test_the_build_context_holds_what_the_image_copies() -> None:
    *builds, _ = dockerfile_stages()
    copied = {
        source.rstrip("/").removeprefix("./")
        for line in builds[0]
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied == allowed
    assert all((ROOT / name).exists() for name in copied)


def test_every_loglane_variable_of_the_image_and_the_containers_is_a_setting() -> None:
    settings = {variable(name) for name in Settings.model_fields}
    in_image = set(re.findall(r"\b(LOGLANE_[A-Z_]+)=", (ROOT / "Dockerfile").read_text()))
    in_compose = {
        name
        for service in app_containers().values()
        for name in service.get("environment", {})  # type: ignore[union-attr]
    }
    assert in_image
    assert in_compose
    assert (in_image | in_compose) - settings == set()


def test_compose_runs_the_shop_api_and_one_worker_per_service() -> None:
    commands = [service["command"] for service in app_containers().values()]
    workers = sorted(c[3] for c in commands if c[:3] == ["loglane", "worker", "--service"])  # type: ignore[index]
    assert workers == sorted(service.name for service in shop.landscape)
    assert ["loglane", "api"] in commands
    for service in app_containers().values():
        assert service["environment"]["LOGLANE_APP"] == shop.__name__  # type: ignore[index]


def test_the_shop_waits_for_healthy_servers_and_reaches_kafka_where_kafka_says_it_is() -> None:
    services = compose()
    kafka = services["kafka"]["environment"]
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"]  # type: ignore[index]
    for name, service in app_containers().items():
        depends = service["depends_on"]
        assert depends == {
            "kafka": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }, name
        log: str = service["environment"]["LOGLANE_LOG"]  # type: ignore[index]
        assert f"//{log.removeprefix('kafka://')}" in advertised
    assert "healthcheck" in services["kafka"]
    assert "healthcheck" in services["postgres"]


def test_every_worker_container_serves_the_probes_the_health_check_asks() -> None:
    for name, service in app_containers().items():
        command: list[str] = service["command"]  # type: ignore[assignment]
        environment: dict[str, object] = service["environment"]  # type: ignore[assignment]
        if command[1] == "worker":
            assert "LOGLANE_PROBE_PORT" in environment, name


def health_check() -> list[str]:
    """The command of the image's HEALTHCHECK."""
    *_, run = dockerfile_stages()
    (line,) = [line for line in run if line.startswith("HEALTHCHECK ")]
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    return command


def test_the_health_check_passes_while_the_api_serves_and_fails_without_it(
    tmp_path: Path,
) -> None:
    with api_process(tmp_path, "tests.apps.ledger", "--port", "0") as api:
        port = api.url.rsplit(":", 1)[1]
        python, *args = health_check()
        assert python == "python"

        def check(**env: str) -> int:
            done = subprocess.run(
                [sys.executable, *args], env=child_environment(**env), timeout=60, check=False
            )
            return done.returncode

        assert check(LOGLANE_PORT=port) == 0
        assert check(LOGLANE_PORT="1") != 0
        assert check(LOGLANE_PORT="1", LOGLANE_PROBE_PORT=port) == 0
