"""Settings of `loglane run`, `worker` and `api`: an option, else a `LOGLANE_…` variable, else
the default.

Each setting is one field of `Settings`; its variable is its name in capitals after the prefix
(`batch_size` is `LOGLANE_BATCH_SIZE`) and its option the name with dashes (`--batch-size`).
docs/settings.md has the table; `loglane config APP` prints what a command would use, secrets
masked. pydantic-settings reads the environment, so a value from there is validated like one
given on the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from loglane.errors import ConfigurationError
from loglane.urls import DEFAULT_DB_URL, DEFAULT_LOG_URL

if TYPE_CHECKING:  # the API package imports FastAPI: too slow for every command line
    from loglane.api.settings import ApiSettings

PREFIX = "LOGLANE_"
MASK = "****"
Source = Literal["option", "environment", "default"]

# words that make a URL's query parameter a secret: sasl_password, ssl.key.password, token=…
_SECRET_WORDS = ("password", "passwd", "secret", "token")


def _comma_separated(value: object) -> object:
    """`a,b` from the environment is ["a", "b"]; a list (repeated options) stays a list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """What `run`, `worker` and `api` run, and how; `resolve` builds one from the options given."""

    # an empty variable (`LOGLANE_PROBE_PORT=`, as a container template leaves it) is unset
    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    app: str = Field(description="The landscape: module, module:attribute or file.py")
    service: CommaList = Field(
        default_factory=list,
        description="The service of a worker; for the API, the services to serve "
        "(comma-separated; default: every service)",
    )
    log: str = Field(default=DEFAULT_LOG_URL, description="Log backend URL")
    db: str = Field(default=DEFAULT_DB_URL, description="Store backend URL")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Loglane's own logs on stderr: text or json lines"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="The least severe of Loglane's logs to print"
    )
    batch_size: int = Field(default=1000, ge=1, description="Records a worker takes per batch")
    workers: int = Field(default=1, ge=1, description="Worker threads per service (`run`)")
    api: bool = Field(default=True, description="Serve the HTTP API next to the workers (`run`)")
    host: str = Field(
        default="127.0.0.1", description="Address the HTTP API, or a worker's probes, listens on"
    )
    port: int = Field(
        default=8000, ge=0, le=65535, description="Port the HTTP API listens on (0: any free one)"
    )
    probe_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve /healthz, /readyz and /metrics of `worker` on this port (on --host)",
    )
    api_tokens: CommaList = Field(
        default_factory=list,
        description="Bearer tokens the API accepts (comma-separated; none: no auth)",
    )
    # the API's limits: ApiSettings' defaults, kept equal by tests/test_settings.py
    api_max_body_bytes: int = Field(
        default=1_048_576, ge=1, description="Larger request bodies get 413"
    )
    api_max_wait: float = Field(
        default=60.0, gt=0, description="The longest ?wait= a client may ask for, s"
    )
    api_read_wait: float = Field(
        default=10.0,
        gt=0,
        description="How long a view read with ?position= waits for the view to catch up, s",
    )
    api_claim_timeout: float = Field(
        default=30.0,
        gt=0,
        description="An Idempotency-Key claimed but not appended for this long is taken over, s",
    )
    api_read_timeout: float = Field(
        default=30.0,
        gt=0,
        description="A request must arrive in full this soon after its first byte, else 408, s",
    )
    api_idle_timeout: int = Field(
        default=30, ge=1, description="An idle connection is closed after this long, s"
    )

    @field_validator("service", "api_tokens", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_separated(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def resolve(cls, **options: Any) -> Settings:
        """The settings with `options` (a command's; None: not given) over the environment.

        A value that does not fit is a `ConfigurationError` naming its option and variable.
        """
        given = {name: value for name, value in options.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise ConfigurationError(_one_line(exc)) from None

    def api_settings(self) -> ApiSettings:
        """The HTTP API's limits and timings, the rest at their defaults."""
        from loglane.api.settings import ApiSettings

        return ApiSettings(
            max_body_bytes=self.api_max_body_bytes,
            max_wait=self.api_max_wait,
            read_wait=self.api_read_wait,
            claim_timeout=self.api_claim_timeout,
        )

    def one_service(self) -> str:
        """The single service a worker runs."""
        if len(self.service) != 1:
            raise ConfigurationError(
                f"a worker runs exactly one service; got {len(self.service)}: give --service S "
                f"or set {PREFIX}SERVICE"
            )
        return self.service[0]


def variable(name: str) -> str:
    """The environment variable of setting `name`."""
    return PREFIX + name.upper()


def option(name: str) -> str:
    """The command-line option of setting `name`."""
    return "--" + name.replace("_", "-")


def help_text(name: str, *, more: str = "") -> str:
    """An option's help: the setting's description, `more`, its variable and its default."""
    field = Settings.model_fields[name]
    default = (
        "" if field.is_required() else shown(name, field.get_default(call_default_factory=True))
    )
    told = f"env {variable(name)}" + (f", default {default}" if default else "")
    return f"{field.description}{more} ({told})"


@dataclass(frozen=True, slots=True)
class Effective:
    """One line of `loglane config`: a setting, its value as shown, and where it came from."""

    name: str
    shown: str
    source: Source


def effective(
    settings: Settings, given: Mapping[str, object], env: Mapping[str, str]
) -> list[Effective]:
    """Every setting with its value, secrets masked, and where it came from."""
    lines = []
    for name in Settings.model_fields:
        source: Source = "default"
        if given.get(name) is not None:
            source = "option"
        elif variable(name) in env:
            source = "environment"
        lines.append(Effective(name, shown(name, getattr(settings, name)), source))
    return lines


def shown(name: str, value: object) -> str:
    """`value` as `loglane config` prints it: tokens and passwords replaced by ****."""
    if name == "api_tokens":
        return ",".join(MASK for _ in value) if isinstance(value, list) else MASK
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()
    if name in ("log", "db") and isinstance(value, str):
        return mask_url(value)
    return str(value)


def mask_url(url: str) -> str:
    """`url` with the password of its user and every secret query parameter masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user_info, _, hosts = netloc.rpartition("@")
        if ":" in user_info:
            user_info = user_info.split(":", 1)[0] + ":" + MASK
        netloc = f"{user_info}@{hosts}"
    query = urlencode(
        [
            (key, MASK if any(word in key.lower() for word in _SECRET_WORDS) else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="{}/:,*",
        quote_via=quote,
    )
    base = f"{parts.scheme}://{netloc}{parts.path}"
    return f"{base}?{query}" if query else base


def _one_line(exc: ValidationError) -> str:
    """A validation error as one line per setting: option, variable, what is wrong."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        if name not in Settings.model_fields:
            problems.append(f"{name}: {error['msg']}")
            continue
        where = (
            f"APP (or {variable(name)})"
            if name == "app"
            else f"{option(name)} (or {variable(name)})"
        )
        detail = "missing" if error["type"] == "missing" else error["msg"]
        value = (
            ""
            if error["type"] == "missing" or name == "api_tokens"
            else f", got {error['input']!r}"
        )
        problems.append(f"{where}: {detail}{value}")
    return "; ".join(problems)
