"""Structured logs: one JSON object per line, or a readable console form.

Loglane's modules log through `logging` with `extra` fields (`service`, `partition`, `offset`,
`request_id`); both formats carry them, and the `trace_id` of the current OpenTelemetry span
when there is one, so a request can be followed across services. `configure` sets up the root
logger, so a handler's own `logging` calls come out in the same form.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from loglane import tracing

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    trace_id = tracing.trace_id()  # formatted on the thread that logged, inside its span
    if trace_id is not None:
        fields.setdefault("trace_id", trace_id)
    return fields


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        line = f"{line}  {extras}" if extras else line
        if record.exc_info:  # a worker error without its traceback cannot be acted on
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Send every log record at `level` and above (Loglane's, and the handlers' own) to
    stderr as `text` or `json` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    loglane = logging.getLogger("loglane")  # as an earlier version left it: on its own
    loglane.handlers.clear()
    loglane.setLevel(logging.NOTSET)
    loglane.propagate = True
