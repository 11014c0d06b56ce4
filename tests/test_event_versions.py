"""Event types change: old data is upcast before a handler sees it, newer data is refused."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from loglane import (
    ConfigurationError,
    Event,
    PermanentError,
    RequestStatus,
    Retry,
    Service,
    Transaction,
    Upcasters,
)
from loglane.commands import command_message
from loglane.dlq import ERROR_HEADER
from loglane.envelope import read_envelope
from loglane.records import Message, Record
from loglane.testing import LandscapeTest


class SignupV1(Event):  # as the first release posted it
    event_type: ClassVar[str] = "Signup"
    user: str
    name: str


class SignupV2(Event):
    event_type: ClassVar[str] = "Signup"
    event_version: ClassVar[int] = 2
    user: str
    first_name: str
    last_name: str


def split_name(data: dict[str, Any]) -> dict[str, Any]:
    first, _, last = data.pop("name").partition(" ")
    return {**data, "first_name": first, "last_name": last}


def add_plan(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "plan": "free"}


class Signup(Event):  # the code of today
    event_type: ClassVar[str] = "Signup"
    event_version: ClassVar[int] = 3
    event_upcasters: ClassVar[Upcasters] = {1: split_name, 2: add_plan}
    user: str
    first_name: str
    last_name: str
    plan: str


class SignupV4(Event):  # from a release this code has not seen
    event_type: ClassVar[str] = "Signup"
    event_version: ClassVar[int] = 4
    user: str
    first_name: str
    last_name: str
    plan: str
    referrer: str


class User(BaseModel):
    user: str
    first_name: str
    last_name: str
    plan: str


users = Service("users", partitions=2, retry=Retry(attempts=3, backoff_seconds=0.001))
user_view = users.view("users", User, key="user")
seen: list[Signup] = []


@users.handles(Signup, key="user")
def signup(command: Signup, tx: Transaction) -> None:
    seen.append(command)
    if command.first_name == "Mallory":
        raise PermanentError("Mallory may not sign up")
    tx[user_view].put(User(**command.model_dump()))


def post(test: LandscapeTest, command: Event) -> str:
    request_id, message = command_message(users, command)
    test.log.append([message])
    return request_id


def test_every_handler_sees_the_current_version_whatever_version_is_in_the_log() -> None:
    seen.clear()
    with LandscapeTest(users) as test:
        post(test, SignupV1(user="ada", name="Ada Lovelace"))
        post(test, SignupV2(user="alan", first_name="Alan", last_name="Turing"))
        post(test, Signup(user="grace", first_name="Grace", last_name="Hopper", plan="pro"))
        test.run_until_quiet()
        assert sorted((s.user, s.first_name, s.last_name, s.plan) for s in seen) == [
            ("ada", "Ada", "Lovelace", "free"),
            ("alan", "Alan", "Turing", "free"),
            ("grace", "Grace", "Hopper", "pro"),
        ]
        assert test.view(user_view).get("ada") == User(
            user="ada", first_name="Ada", last_name="Lovelace", plan="free"
        )
        assert test.dead_letters("users") == []


def test_an_event_newer_than_the_code_is_dead_lettered_with_its_reason_not_misread() -> None:
    seen.clear()
    with LandscapeTest(users) as test:
        newer = SignupV4(user="bob", first_name="Bob", last_name="B", plan="pro", referrer="ada")
        request_id = post(test, newer)
        test.run_until_quiet()
        assert seen == [], "no handler saw it"
        (letter,) = test.dead_letters("users")
        reason = dict(letter.headers)[ERROR_HEADER].decode()
        assert "version 4 is newer than this code knows (version 3)" in reason
        outcome = test.outcome(request_id)
        assert outcome is not None
        assert outcome.status is RequestStatus.FAILED


def test_the_version_travels_as_dataschema_and_version_1_carries_none() -> None:
    _, old = command_message(users, SignupV1(user="a", name="A B"))
    _, new = command_message(users, Signup(user="a", first_name="A", last_name="B", plan="x"))
    assert read_envelope(_record(old)).dataschema is None
    assert read_envelope(_record(new)).dataschema == "urn:loglane:Signup:v3"
    assert read_envelope(_record(new)).type == "Signup", "the type stays, so routing holds"


def _record(message: Message) -> Record:
    return Record(message.topic, 0, 0, message.key, message.value, message.headers, 0)


def test_upcasters_must_stand_for_versions_before_the_current_one() -> None:
    with pytest.raises(ConfigurationError, match="keyed by the versions before it"):

        class Wrong(Event):
            event_version: ClassVar[int] = 2
            event_upcasters: ClassVar[Upcasters] = {2: add_plan}


def test_a_permanent_error_goes_to_the_dlq_at_once_without_retries() -> None:
    seen.clear()
    with LandscapeTest(users) as test:
        request_id = post(test, Signup(user="m", first_name="Mallory", last_name="M", plan="x"))
        test.run_until_quiet()
        assert len(seen) == 1, "no retry"
        (letter,) = test.dead_letters("users")
        reason = dict(letter.headers)[ERROR_HEADER].decode()
        assert reason.startswith("handler failed for good: PermanentError('Mallory may not")
        outcome = test.outcome(request_id)
        assert outcome is not None
        assert outcome.status is RequestStatus.FAILED


def test_a_type_named_in_give_up_on_is_not_retried_and_others_are() -> None:
    retry = Retry(attempts=3, give_up_on=(KeyError,))
    assert not retry.retries(KeyError("k"), 0)
    assert retry.retries(TimeoutError(), 0)
    assert retry.retries(TimeoutError(), 1)
    assert not retry.retries(TimeoutError(), 2), "three attempts in all"
