"""Settings of `run`, `worker` and `api`: options, else LOGLANE_… variables, else defaults."""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import typer.main

from loglane.api.serve import IDLE_TIMEOUT, READ_TIMEOUT
from loglane.api.settings import ApiSettings
from loglane.cli import app
from loglane.errors import ConfigurationError
from loglane.settings import Settings, mask_url, variable
from tests.processes import ROOT, api_process, child_environment

DOCS = ROOT / "docs" / "settings.md"
# a command's parameter that is named apart from its setting
_SETTING_OF = {"app_path": "app", "api_token": "api_tokens"}


@pytest.fixture(autouse=True)
def no_loglane_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the variables it means; none leak in from the shell that runs pytest."""
    for name in Settings.model_fields:
        monkeypatch.delenv(variable(name), raising=False)


def options_of(command: str) -> set[str]:
    """The settings behind the parameters of `loglane COMMAND`."""
    group = typer.main.get_group(app)
    params = group.commands[command].params
    return {_SETTING_OF.get(str(param.name), str(param.name)) for param in params}


def loglane(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loglane", *args],
        cwd=ROOT,
        env=child_environment(COLUMNS="200", **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("command", ["run", "worker", "api"])
def test_every_option_of_a_command_that_runs_services_is_a_setting(command: str) -> None:
    assert options_of(command) <= set(Settings.model_fields)


def test_config_takes_every_option_that_run_worker_and_api_take() -> None:
    assert options_of("run") | options_of("worker") | options_of("api") <= options_of("config")


def test_every_setting_has_a_row_in_the_docs_table() -> None:
    rows = set(re.findall(r"^\| `(LOGLANE_[A-Z_]+)` \|", DOCS.read_text(), re.MULTILINE))
    assert rows == {variable(name) for name in Settings.model_fields}


def test_every_setting_comes_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = {
        "LOGLANE_APP": "tests.apps.ledger",
        "LOGLANE_SERVICE": "ledger, audit",
        "LOGLANE_LOG": "kafka://broker:9092",
        "LOGLANE_DB": "postgresql://app@db/app",
        "LOGLANE_LOG_FORMAT": "json",
        "LOGLANE_LOG_LEVEL": "warning",
        "LOGLANE_BATCH_SIZE": "50",
        "LOGLANE_WORKERS": "3",
        "LOGLANE_API": "false",
        "LOGLANE_HOST": "0.0.0.0",
        "LOGLANE_PORT": "9000",
        "LOGLANE_PROBE_PORT": "9100",
        "LOGLANE_API_TOKENS": "one,two",
        "LOGLANE_API_MAX_BODY_BYTES": "4096",
        "LOGLANE_API_MAX_WAIT": "5",
        "LOGLANE_API_READ_WAIT": "2.5",
        "LOGLANE_API_CLAIM_TIMEOUT": "7",
        "LOGLANE_API_READ_TIMEOUT": "12.5",
        "LOGLANE_API_IDLE_TIMEOUT": "9",
    }
    assert set(environment) == {variable(name) for name in Settings.model_fields}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings.resolve()
    assert settings.model_dump() == {
        "app": "tests.apps.ledger",
        "service": ["ledger", "audit"],
        "log": "kafka://broker:9092",
        "db": "postgresql://app@db/app",
        "log_format": "json",
        "log_level": "WARNING",
        "batch_size": 50,
        "workers": 3,
        "api": False,
        "host": "0.0.0.0",
        "port": 9000,
        "probe_port": 9100,
        "api_tokens": ["one", "two"],
        "api_max_body_bytes": 4096,
        "api_max_wait": 5.0,
        "api_read_wait": 2.5,
        "api_claim_timeout": 7.0,
        "api_read_timeout": 12.5,
        "api_idle_timeout": 9,
    }


def test_an_option_wins_over_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGLANE_PORT", "9000")
    monkeypatch.setenv("LOGLANE_API_TOKENS", "from-env")
    settings = Settings.resolve(app="x", port=8080, api_tokens=["a", "b"], host=None)
    assert (settings.port, settings.api_tokens, settings.host) == (8080, ["a", "b"], "127.0.0.1")


def test_an_empty_variable_is_an_unset_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOGLANE_PROBE_PORT", "LOGLANE_PORT", "LOGLANE_LOG", "LOGLANE_API_TOKENS"):
        monkeypatch.setenv(name, "")
    settings = Settings.resolve(app="x")
    assert (settings.probe_port, settings.port, settings.log, settings.api_tokens) == (
        None,
        8000,
        "embedded:///.loglane/log.db",
        [],
    )


def test_a_bad_value_names_its_option_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGLANE_BATCH_SIZE", "lots")
    with pytest.raises(ConfigurationError, match=r"--batch-size \(or LOGLANE_BATCH_SIZE\)"):
        Settings.resolve(app="x")


def test_an_app_neither_given_nor_set_says_how_to_give_it() -> None:
    with pytest.raises(ConfigurationError, match=r"APP \(or LOGLANE_APP\): missing"):
        Settings.resolve()


def test_the_api_limits_default_to_the_apis_own_defaults() -> None:
    ours = Settings.resolve(app="x").api_settings()
    assert ours == ApiSettings()
    shared = {f.name for f in dataclasses.fields(ApiSettings)} & {
        name.removeprefix("api_") for name in Settings.model_fields
    }
    assert shared == {"max_body_bytes", "max_wait", "read_wait", "claim_timeout"}


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:****@db:5432/app"),
        (
            "postgresql://app:s3cret@db/app?schema={service}&password=s3cret",
            "postgresql://app:****@db/app?schema={service}&password=****",
        ),
        (
            "kafka://b1:9092,b2:9092?sasl_username=app&sasl_password=s3cret",
            "kafka://b1:9092,b2:9092?sasl_username=app&sasl_password=****",
        ),
        ("kafka://b:9092?ssl.key.password=s3cret", "kafka://b:9092?ssl.key.password=****"),
        ("embedded:///.loglane/log.db", "embedded:///.loglane/log.db"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
    ],
)
def test_a_url_is_shown_without_its_secrets(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_config_prints_the_effective_settings_with_secrets_masked() -> None:
    result = loglane(
        "config",
        "tests.apps.ledger",
        "--port",
        "9001",
        LOGLANE_DB="postgresql://app:s3cret@db/app",
        LOGLANE_API_TOKENS="tok3n-one,tok3n-two",
    )
    assert result.returncode == 0, result.stderr
    lines = dict(
        re.fullmatch(r"(\S+?)=(.*?)\s+# (\w+)", line).groups()[0::2]  # type: ignore[union-attr]
        for line in result.stdout.splitlines()
        if line.startswith("LOGLANE_")
    )
    assert lines == {
        "LOGLANE_APP": "option",
        "LOGLANE_SERVICE": "default",
        "LOGLANE_LOG": "default",
        "LOGLANE_DB": "environment",
        "LOGLANE_LOG_FORMAT": "default",
        "LOGLANE_LOG_LEVEL": "default",
        "LOGLANE_BATCH_SIZE": "default",
        "LOGLANE_WORKERS": "default",
        "LOGLANE_API": "default",
        "LOGLANE_HOST": "default",
        "LOGLANE_PORT": "option",
        "LOGLANE_PROBE_PORT": "default",
        "LOGLANE_API_TOKENS": "environment",
        "LOGLANE_API_MAX_BODY_BYTES": "default",
        "LOGLANE_API_MAX_WAIT": "default",
        "LOGLANE_API_READ_WAIT": "default",
        "LOGLANE_API_CLAIM_TIMEOUT": "default",
        "LOGLANE_API_READ_TIMEOUT": "default",
        "LOGLANE_API_IDLE_TIMEOUT": "default",
    }
    assert "LOGLANE_DB=postgresql://app:****@db/app " in result.stdout
    assert "LOGLANE_API_TOKENS=****,**** " in result.stdout
    assert "LOGLANE_PORT=9001 " in result.stdout
    assert "s3cret" not in result.stdout
    assert "tok3n" not in result.stdout
    assert "# services in tests.apps.ledger: ledger, audit" in result.stdout


def test_a_worker_takes_its_app_and_service_from_the_environment(tmp_path: Path) -> None:
    result = loglane(
        "worker",
        LOGLANE_APP="tests.apps.ledger",
        LOGLANE_SERVICE="nope",
        LOGLANE_LOG=f"embedded:///{tmp_path}/log.db",
    )
    assert result.returncode == 2
    assert "no service named 'nope'; this landscape has ledger, audit" in result.stderr


def test_a_bad_variable_is_one_red_line_from_the_command(tmp_path: Path) -> None:
    result = loglane("run", "tests.apps.ledger", LOGLANE_WORKERS="0")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --workers (or LOGLANE_WORKERS): ")
    assert result.stderr.count("\n") == 1


def test_the_api_is_configured_from_the_environment_alone(tmp_path: Path) -> None:
    with api_process(
        tmp_path,
        LOGLANE_APP="tests.apps.ledger",
        LOGLANE_SERVICE="ledger",
        LOGLANE_HOST="127.0.0.1",
        LOGLANE_PORT="0",
        LOGLANE_API_TOKENS="first,second",
        LOGLANE_API_MAX_BODY_BYTES="64",
    ) as api:
        url = api.url
        assert "the API of ledger on" in api.output.read_text()
        assert httpx.get(f"{url}/readyz").status_code == 401
        authorized = {"authorization": "Bearer second"}
        assert httpx.get(f"{url}/readyz", headers=authorized).status_code == 200
        big = {"account": "a" * 100, "seq": 1, "amount": 1}
        posted = httpx.post(f"{url}/ledger/commands/Deposit", json=big, headers=authorized)
        assert posted.status_code == 413


def test_the_servers_timeouts_default_to_what_the_server_uses_alone() -> None:
    fields = Settings.model_fields
    assert fields["api_read_timeout"].default == READ_TIMEOUT
    assert fields["api_idle_timeout"].default == IDLE_TIMEOUT


def test_a_read_timeout_from_the_environment_cuts_off_a_silent_client(tmp_path: Path) -> None:
    args = ("tests.apps.ledger", "--port", "0")
    with api_process(tmp_path, *args, LOGLANE_API_READ_TIMEOUT="1") as api:
        host, port = api.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=20) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and then nothing
            answer = client.recv(4096)  # well before the default 30 s
        assert answer.startswith(b"HTTP/1.1 408"), answer
