"""A landscape: the app services that run together, loaded from `module:attribute`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from loglane.errors import ConfigurationError
from loglane.events import Event
from loglane.service import Service


class Landscape:
    """Named services; `loglane run APP` runs all of them.

    Every service a handler names in `source=` must be one of them: a misspelt source would
    otherwise consume an empty topic of its own making and never hear a thing.
    """

    def __init__(self, services: Iterable[Service]) -> None:
        self.services: dict[str, Service] = {}
        for service in services:
            if service.name in self.services:
                raise ConfigurationError(f"two services are named {service.name!r}")
            self.services[service.name] = service
        if not self.services:
            raise ConfigurationError("a landscape needs at least one service")
        for service in self:
            unknown = [source for source in service.sources if source not in self.services]
            if unknown:
                raise ConfigurationError(
                    f"service {service.name!r} handles events from {', '.join(unknown)}, which "
                    f"this landscape does not have; its services are {', '.join(self.services)}"
                    " (check each handler's source=)"
                )

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services.values())

    def __len__(self) -> int:
        return len(self.services)

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise ConfigurationError(
                f"no service named {name!r}; this landscape has {', '.join(self.services)}"
            ) from None

    def service_for(self, command: Event) -> Service:
        """The one service whose input accepts `command`."""
        owners = [s for s in self if command.event_type in s.commands]
        if len(owners) != 1:
            where = ", ".join(s.name for s in owners) or "no service"
            raise ConfigurationError(
                f"{command.event_type} is accepted by {where}; name the service explicitly"
            )
        return owners[0]


def load_landscape(target: str) -> Landscape:
    """Import `module`, `module:attribute` or `path/to/file.py[:attribute]` as a landscape.

    The attribute may be a `Landscape`, a `Service` or a list of services; without one, every
    `Service` defined at the module's top level is taken.
    """
    location, _, attribute = target.partition(":")
    module = _import(location)
    if attribute:
        try:
            found = getattr(module, attribute)
        except AttributeError:
            raise ConfigurationError(f"{location} has no attribute {attribute!r}") from None
    else:
        found = [value for value in vars(module).values() if isinstance(value, Service)]
    if isinstance(found, Landscape):
        return found
    if isinstance(found, Service):
        return Landscape([found])
    if isinstance(found, list | tuple) and all(isinstance(s, Service) for s in found):
        return Landscape(found)
    raise ConfigurationError(f"{target} is not a Landscape, a Service or a list of services")


def _import(location: str) -> object:
    if location.endswith(".py"):
        path = Path(location).resolve()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None or not path.exists():
            raise ConfigurationError(f"cannot load {location}: no such Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"cannot import {location!r} ({exc}); give a module path like 'shop.app' or a file "
            "like 'app.py', run from the folder that holds it"
        ) from exc
