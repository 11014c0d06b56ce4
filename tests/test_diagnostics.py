"""Logs people read: an error logged with its exception shows the traceback."""

from __future__ import annotations

import logging
import sys

from loglane.diagnostics import ConsoleFormatter


def test_the_console_format_keeps_the_traceback_of_a_logged_exception() -> None:
    record = logging.LogRecord("loglane.worker", logging.ERROR, __file__, 1, "failed", (), None)
    try:
        raise ValueError("the real reason")
    except ValueError:
        record.exc_info = sys.exc_info()
    lines = ConsoleFormatter().format(record).splitlines()
    assert lines[0] == "error   loglane.worker: failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: the real reason"
