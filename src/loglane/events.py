"""Events: commands posted to a service's input and facts it emits on its output."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel


class Event(BaseModel):
    """Base of every command and fact; a pydantic v2 model carried as a CloudEvent.

    `event_type` is the CloudEvents `type`: the class name unless a subclass sets it, for
    example `event_type: ClassVar[str] = "com.example.CustomerCreated"`.
    """

    event_type: ClassVar[str] = "Event"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__


class Rejected(Event):
    """Emitted on `<service>.out` when a handler calls `tx.reject(reason)`."""

    event_type: ClassVar[str] = "loglane.Rejected"

    reason: str
