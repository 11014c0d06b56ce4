"""The `loglane` command line: one module per group of commands, all on one Typer app."""

from __future__ import annotations

import sys
import threading

from loglane.cli import config, dlq, documents, inspecting, rebuilding, resetting, running
from loglane.cli._common import app

__all__ = ["app", "main"]
# imported for the commands they register
_COMMANDS = (config, dlq, documents, inspecting, rebuilding, resetting, running)


def main() -> None:
    threading.current_thread().name = "main"
    sys.exit(app())
