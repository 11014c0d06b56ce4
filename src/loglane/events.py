"""Events: commands posted to a service's input and facts it emits on its output.

An event type may change over the years. Its data has a version (`event_version`, 1 unless
a class says otherwise), which travels in the CloudEvents `dataschema` attribute
(`urn:loglane:<type>:v<N>`, absent for version 1) while the `type` stays the same, so
subscribers and handlers keep routing by it. `event_upcasters` turns the data of each older
version into the next one's; a handler always sees the current model:

    def split_name(data: dict[str, Any]) -> dict[str, Any]:  # version 1 -> 2
        first, _, last = data.pop("name").partition(" ")
        return {**data, "first_name": first, "last_name": last}

    class CustomerCreated(Event):
        event_version: ClassVar[int] = 2
        event_upcasters: ClassVar[Upcasters] = {1: split_name}
        customer_id: str
        first_name: str
        last_name: str

An event of a version newer than the code is refused into the DLQ with the reason, never
misread: deploy the code that knows it first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel

from loglane.errors import ConfigurationError, LoglaneError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
Upcasters = Mapping[int, Upcaster]
"""Per version N: the function that turns data of version N into data of version N + 1."""


class EventVersionError(LoglaneError):
    """An event's data is of a version this code cannot turn into its model."""


class Event(BaseModel):
    """Base of every command and fact; a pydantic v2 model carried as a CloudEvent.

    `event_type` is the CloudEvents `type`: the class name unless a subclass sets it, for
    example `event_type: ClassVar[str] = "com.example.CustomerCreated"`.
    """

    event_type: ClassVar[str] = "Event"
    event_version: ClassVar[int] = 1
    event_upcasters: ClassVar[Upcasters] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__
        wrong = [v for v in cls.event_upcasters if not 1 <= v < cls.event_version]
        if cls.event_version < 1 or wrong:
            raise ConfigurationError(
                f"{cls.__name__}: event_version must be 1 or more, and event_upcasters "
                f"keyed by the versions before it (1 to {cls.event_version - 1}), each "
                f"turning that version's data into the next; got version "
                f"{cls.event_version} and upcasters for {sorted(cls.event_upcasters)}"
            )

    @classmethod
    def upcast(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """`data` of `version` turned into data of the current version, step by step."""
        for step in range(version, cls.event_version):
            upcaster = cls.event_upcasters.get(step)
            if upcaster is None:
                raise EventVersionError(
                    f"{cls.event_type} data of version {step} has no upcaster to version "
                    f"{step + 1}; add event_upcasters[{step}] to {cls.__name__}"
                )
            data = upcaster(data)
        return data


class Rejected(Event):
    """Emitted on `<service>.out` when a handler calls `tx.reject(reason)`."""

    event_type: ClassVar[str] = "loglane.Rejected"

    reason: str
