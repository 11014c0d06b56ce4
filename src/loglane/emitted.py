"""Which event types a service emits on its output topic, for the documents that describe it
(AsyncAPI, and the typed events of the OpenAPI document).

A service does not declare its output, so it is found where it shows:

- the types other services of the landscape follow from it (`@orders.handles(CustomerCreated,
  source=customers)`): certain;
- the types its handlers build in a `tx.emit(...)` call, read from the handlers' source
  (`tx.emit(CustomerCreated(...))`, `tx.emit(events.CustomerCreated.model_validate(...))`):
  an event built elsewhere and passed in a variable is not seen;
- `loglane.Rejected`, which any command handler may emit with `tx.reject(...)`.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

from loglane.events import Event, Rejected
from loglane.service import Service


def emitted_types(service: Service, landscape: Iterable[Service] = ()) -> list[type[Event]]:
    """The event types `service` emits, as far as they can be known, by type name."""
    found: dict[str, type[Event]] = {}
    for other in landscape:
        for handler in other.handlers:
            if handler.topic == service.output_topic:
                found.setdefault(handler.event_type.event_type, handler.event_type)
    for handler in service.handlers:
        for event_type in _emitted_by(handler.func):
            found.setdefault(event_type.event_type, event_type)
    if service.commands:
        found.setdefault(Rejected.event_type, Rejected)
    return [found[name] for name in sorted(found)]


def _emitted_by(func: Callable[..., Any]) -> list[type[Event]]:
    func = inspect.unwrap(func)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        names = {**getattr(func, "__globals__", {}), **inspect.getclosurevars(func).nonlocals}
    except (OSError, TypeError, SyntaxError):
        return []  # not a plain function, or defined where no source is kept (a REPL)
    found: list[type[Event]] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "emit"
            and node.args
            and isinstance(node.args[0], ast.Call)
        ):
            event_type = _event_type(node.args[0].func, names)
            if event_type is not None:
                found.append(event_type)
    return found


def _event_type(expression: ast.expr, names: dict[str, Any]) -> type[Event] | None:
    """The Event subclass that `expression` (a call's callee) constructs, if it names one:
    `Created`, `events.Created`, or a class method of one (`Created.model_validate`)."""
    value = _resolve(expression, names)
    if isinstance(value, type) and issubclass(value, Event):
        return value
    if isinstance(expression, ast.Attribute):
        owner = _resolve(expression.value, names)
        if isinstance(owner, type) and issubclass(owner, Event):
            return owner
    return None


def _resolve(expression: ast.expr, names: dict[str, Any]) -> Any:
    if isinstance(expression, ast.Name):
        return names.get(expression.id)
    if isinstance(expression, ast.Attribute):
        owner = _resolve(expression.value, names)
        return None if owner is None else getattr(owner, expression.attr, None)
    return None
