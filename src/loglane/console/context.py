"""What every page of the console shares: the services it serves and how pages are rendered."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from loglane.errors import LoglaneError

if TYPE_CHECKING:
    from loglane.api.runtime import ServiceRuntime

PREFIX = "/ui"
HERE = Path(__file__).parent


class PageNotFoundError(LoglaneError):
    """A console page names something this server does not serve; rendered as a 404 page."""


class Console:
    """The services one console shows, as the API serves them, and its template renderer."""

    def __init__(self, runtimes: Mapping[str, ServiceRuntime]) -> None:
        self.runtimes = runtimes
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        environment.filters["clock"] = clock
        environment.filters["pretty"] = pretty
        self.templates = Jinja2Templates(env=environment)

    def runtime(self, name: str) -> ServiceRuntime:
        """The runtime of the service `name`, opened; `PageNotFoundError` if not served."""
        runtime = self.runtimes.get(name)
        if runtime is None:
            raise PageNotFoundError(
                f"this server serves no service {name!r}; it serves {', '.join(self.runtimes)}"
            )
        return runtime

    def page(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Response:
        context.setdefault("services", list(self.runtimes))
        return self.templates.TemplateResponse(
            request, template, {"prefix": PREFIX, **context}, status_code=status_code
        )


def clock(epoch_seconds: float | None) -> str:
    """An instant as UTC wall-clock time to the millisecond, `—` when unknown."""
    if epoch_seconds is None:
        return "—"
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def pretty(text: str | bytes) -> str:
    """JSON text indented for reading; anything else as it is."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text
