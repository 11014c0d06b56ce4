"""Command forms, generated from each command's JSON schema (the one OpenAPI publishes).

Every field of the command becomes an input typed by its schema: text with its length
limits and pattern, numbers with their bounds, a checkbox for a boolean, a list for an enum,
and JSON in a text area for anything nested. The page's script posts the filled-in form to
the API's own command route with `?wait=`, so it blocks until the request is fulfilled (the
seed's UI) and shows the outcome, rendered here from the API's answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from loglane.console.context import Console, PageNotFoundError
from loglane.events import Event


@dataclass(frozen=True, slots=True, kw_only=True)
class FormField:
    """One input of a command form."""

    name: str
    kind: str  # string, integer, number, boolean, enum, json
    required: bool
    title: str
    description: str | None = None
    value: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    options: tuple[str, ...] = ()


def form_fields(command: type[Event]) -> list[FormField]:
    """The inputs of a form for `command`, from its JSON schema, in declaration order."""
    schema = command.model_json_schema()
    definitions = schema.get("$defs", {})
    required = set(schema.get("required", ()))
    return [
        _field(name, _resolve(spec, definitions), name in required)
        for name, spec in schema.get("properties", {}).items()
    ]


def _resolve(spec: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """`spec` with a `$ref` followed, and an optional field's `anyOf [T, null]` taken as T."""
    if "$ref" in spec:
        target = definitions.get(spec["$ref"].rsplit("/", 1)[-1], {})
        return {**target, **{k: v for k, v in spec.items() if k != "$ref"}}
    choices = [choice for choice in spec.get("anyOf", ()) if choice.get("type") != "null"]
    if len(choices) == 1 and len(spec.get("anyOf", ())) == 2:
        rest = {k: v for k, v in spec.items() if k != "anyOf"}
        return {**_resolve(choices[0], definitions), **rest}
    return spec


def _field(name: str, spec: dict[str, Any], required: bool) -> FormField:
    kind = spec.get("type")
    attributes: dict[str, str] = {}
    options: tuple[str, ...] = ()
    default = spec.get("default")
    value = "" if default is None else default if isinstance(default, str) else json.dumps(default)
    if "enum" in spec and all(isinstance(option, str) for option in spec["enum"]):
        kind, options = "enum", tuple(spec["enum"])
    elif kind == "string":
        for key, attribute in (("minLength", "minlength"), ("maxLength", "maxlength")):
            if key in spec:
                attributes[attribute] = str(spec[key])
        if "pattern" in spec:
            attributes["pattern"] = spec["pattern"]
    elif kind in ("integer", "number"):
        attributes["step"] = "1" if kind == "integer" else "any"
        one = 1 if kind == "integer" else 0
        for key, attribute, shift in (
            ("minimum", "min", 0),
            ("maximum", "max", 0),
            ("exclusiveMinimum", "min", one),
            ("exclusiveMaximum", "max", -one),
        ):
            if key in spec:
                attributes[attribute] = str(spec[key] + shift)
    elif kind != "boolean":
        kind = "json"
        if default is None:
            value = ""
    return FormField(
        name=name,
        kind=str(kind),
        required=required,
        title=spec.get("title", name),
        description=spec.get("description"),
        value=value,
        attributes=attributes,
        options=options,
    )


class Answer(BaseModel):
    """What the API answered a form's POST: its status code and JSON body."""

    status_code: int
    answer: Any


def router(console: Console) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.get("/commands")
    async def commands(request: Request) -> Response:
        catalogue = {
            name: sorted(runtime.service.commands.items())
            for name, runtime in console.runtimes.items()
        }
        return console.page(request, "commands.html", catalogue=catalogue)

    @routes.get("/commands/{name}/{command_type}")
    async def command_form(request: Request, name: str, command_type: str) -> Response:
        service = console.runtime(name).service
        command = service.commands.get(command_type)
        if command is None:
            raise PageNotFoundError(
                f"{name} accepts no command {command_type!r}; it accepts "
                f"{', '.join(sorted(service.commands)) or 'none'}"
            )
        return console.page(
            request,
            "command.html",
            service=service,
            command_type=command_type,
            description=(command.__doc__ or "").strip(),
            fields=form_fields(command),
            max_wait=console.runtime(name).settings.max_wait,
        )

    @routes.post("/commands/outcome")
    async def outcome(request: Request, answer: Answer) -> Response:
        body = answer.answer if isinstance(answer.answer, dict) else {}
        return console.page(request, "_outcome.html", code=answer.status_code, answer=body)

    return routes
