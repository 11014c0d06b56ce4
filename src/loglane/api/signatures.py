"""Endpoints whose parameters come from a service definition, not from source code.

FastAPI reads an endpoint's parameters from its signature. Commands and views are declared
at run time, so their endpoints get a signature built here: one typed body per command
type, one query parameter per indexed field. The OpenAPI schema then shows each of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

Endpoint = Callable[..., Awaitable[Any]]


def parameter(
    name: str, annotation: Any, default: Any = inspect.Parameter.empty
) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


def with_signature(endpoint: Endpoint, parameters: list[inspect.Parameter]) -> Endpoint:
    """`endpoint` (taking `**params`) as FastAPI will see it: with exactly `parameters`."""
    endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return endpoint
