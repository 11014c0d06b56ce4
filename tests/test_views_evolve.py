"""View models that change: old rows upcast as they are read, on SQLite and PostgreSQL.

The same service is declared twice, as the code was (version 1) and as it is now; the
rows the old code wrote are read by the new code's store reads, HTTP API and handlers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from loglane import Event, Service, Transaction
from loglane.api import create_app
from loglane.dlq import ERROR_HEADER
from loglane.errors import ConfigurationError, UnreadableRowError
from loglane.records import TopicPartition
from loglane.stores.base import Batch, Store
from loglane.testing import LandscapeTest
from loglane.urls import open_log, open_store
from loglane.views import OutdatedDocument, View
from tests.api.conftest import LiveServer
from tests.postgres import schemas, with_schema


class PersonV1(BaseModel):
    person_id: str
    name: str


class Person(BaseModel):
    person_id: str
    first: str
    last: str


class Register(Event):
    person_id: str
    name: str


class Rename(Event):
    person_id: str
    last: str


def split_name(document: dict[str, Any]) -> dict[str, Any]:
    first, _, last = document.pop("name").partition(" ")
    return {**document, "first": first, "last": last}


def as_it_was() -> tuple[Service, View[PersonV1]]:
    people = Service("people", partitions=1)
    view = people.view("people", PersonV1, key="person_id")

    @people.handles(Register, key="person_id")
    def register(command: Register, tx: Transaction) -> None:
        tx[view].put(PersonV1(person_id=command.person_id, name=command.name))

    return people, view


def as_it_is(**declaration: Any) -> tuple[Service, View[Person]]:
    people = Service("people", partitions=1)
    view = people.view("people", Person, key="person_id", indexes=["last"], **declaration)

    @people.handles(Rename, key="person_id")
    def rename(command: Rename, tx: Transaction) -> None:
        person = tx[view].get(command.person_id)
        assert person is not None
        tx[view].put(person.model_copy(update={"last": command.last}))

    return people, view


UPCAST = {"version": 2, "upcasters": {1: split_name}}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/{{service}}.db"
        return
    url: str = request.getfixturevalue("postgres_url")
    with schemas(url) as prefix:
        yield with_schema(url, prefix + "{service}")


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return f"embedded:///{tmp_path}/log.db"


@pytest.fixture
def registered(log_url: str, db_url: str) -> None:
    """Ada and Alan registered by the code as it was."""
    people, _ = as_it_was()
    with LandscapeTest(people, log_url=log_url, db_url=db_url) as test:
        test.send(Register(person_id="ada", name="Ada Lovelace"))
        test.send(Register(person_id="alan", name="Alan Turing"))
        test.run_until_quiet()


@pytest.mark.usefixtures("registered")
def test_old_rows_are_upcast_when_read_by_key_and_by_query(log_url: str, db_url: str) -> None:
    people, view = as_it_is(**UPCAST)
    with LandscapeTest(people, log_url=log_url, db_url=db_url) as test:
        assert test.view(view).get("ada") == Person(person_id="ada", first="Ada", last="Lovelace")
        assert [p.person_id for p in test.view(view).all()] == ["ada", "alan"]


@pytest.mark.usefixtures("registered")
def test_an_indexed_field_added_with_a_version_is_filled_from_the_upcast_rows(
    log_url: str, db_url: str
) -> None:
    people, view = as_it_is(**UPCAST)
    with LandscapeTest(people, log_url=log_url, db_url=db_url) as test:
        assert test.view(view).all(last="Turing") == [
            Person(person_id="alan", first="Alan", last="Turing")
        ]


@pytest.mark.usefixtures("registered")
def test_a_handler_reads_an_old_row_upcast_and_writes_it_at_the_current_version(
    log_url: str, db_url: str
) -> None:
    people, view = as_it_is(**UPCAST)
    with LandscapeTest(people, log_url=log_url, db_url=db_url) as test:
        test.send(Rename(person_id="ada", last="King"))
        test.run_until_quiet()
        assert test.dead_letters("people") == []
        assert test.view(view).all(last="King") == [
            Person(person_id="ada", first="Ada", last="King")
        ]
    # read with no upcaster at all: only the rewritten row is at the current version
    people, bare = as_it_is(version=2)
    store = open_store(db_url, "people")
    try:
        store.prepare("people", [bare])
        assert store.get(bare, "ada") == Person(person_id="ada", first="Ada", last="King")
        with pytest.raises(UnreadableRowError, match="no upcaster from version 1"):
            store.get(bare, "alan")
    finally:
        store.close()


@pytest.mark.usefixtures("registered")
def test_a_handler_reading_a_row_that_does_not_validate_dead_letters_its_event_with_why(
    log_url: str, db_url: str
) -> None:
    people, _ = as_it_is()  # the model changed, the version did not
    with LandscapeTest(people, log_url=log_url, db_url=db_url) as test:
        request_id = test.send(Rename(person_id="ada", last="King"))
        test.run_until_quiet()
        outcome = test.outcome(request_id)
        assert outcome is not None
        assert outcome.status == "failed"
        [letter] = test.dead_letters("people")
        reason = dict(letter.headers)[ERROR_HEADER].decode()
        assert "UnreadableRowError" in reason
        assert "'ada'" in reason
        assert "loglane rebuild" in reason


@pytest.mark.usefixtures("registered")
def test_the_api_answers_503_with_the_reason_for_a_row_that_does_not_validate(
    log_url: str, db_url: str
) -> None:
    people, _ = as_it_is()  # the model changed, the version did not
    log = open_log(log_url)
    server = LiveServer(create_app([people], log, lambda name: open_store(db_url, name))).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            one = client.get("/people/views/people/ada")
            page = client.get("/people/views/people")
    finally:
        server.stop()
        log.close()
    for response in (one, page):
        assert response.status_code == 503
        assert "loglane rebuild" in response.json()["detail"]
        assert "first: Field required" in response.json()["detail"]


@pytest.mark.usefixtures("registered")
def test_the_api_serves_old_rows_upcast(log_url: str, db_url: str) -> None:
    people, _ = as_it_is(**UPCAST)
    log = open_log(log_url)
    server = LiveServer(create_app([people], log, lambda name: open_store(db_url, name))).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            one = client.get("/people/views/people/ada")
            page = client.get("/people/views/people", params={"last": "Turing"})
    finally:
        server.stop()
        log.close()
    assert one.json() == {"person_id": "ada", "first": "Ada", "last": "Lovelace"}
    assert [row["person_id"] for row in page.json()["items"]] == ["alan"]


def test_a_row_written_by_newer_code_is_refused_not_misread(db_url: str) -> None:
    _, newer = as_it_is(version=3, upcasters={1: split_name, 2: dict})
    _, view = as_it_is(**UPCAST)
    store: Store = open_store(db_url, "people")
    try:
        store.prepare("people", [newer])
        row = Person(person_id="ada", first="Ada", last="Lovelace")
        store.commit(_batch(newer, row))
        with pytest.raises(UnreadableRowError, match="written by newer code"):
            store.get(view, "ada")
    finally:
        store.close()


def test_rows_at_the_current_version_are_handed_on_as_they_are_stored() -> None:
    _, view = as_it_is(**UPCAST)
    document = b'{"person_id": "ada", "first": "Ada", "last": "Lovelace"}'
    assert view.stored(document, 2) is document
    assert view.stored(document, 1) == OutdatedDocument(document, 1)


def test_an_upcaster_that_fails_makes_the_row_unreadable_with_its_error() -> None:
    def broken(document: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("surname")

    _, view = as_it_is(version=2, upcasters={1: broken})
    with pytest.raises(UnreadableRowError, match="upcaster from version 1 failed: KeyError"):
        view.load(OutdatedDocument('{"person_id": "ada", "name": "Ada"}', 1), "ada")


def test_an_old_row_that_is_not_json_is_unreadable_not_a_crash() -> None:
    _, view = as_it_is(**UPCAST)
    with pytest.raises(UnreadableRowError, match="not JSON"):
        view.load(OutdatedDocument("{not json", 1), "ada")


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"version": 0}, "at least 1"),
        ({"version": 2, "upcasters": {2: split_name}}, "1 to 1 for version 2"),
        ({"version": 3, "upcasters": {1: split_name}}, "no upcaster from version 2"),
    ],
)
def test_versions_and_upcasters_are_checked_when_the_view_is_declared(
    declaration: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        as_it_is(**declaration)


def _batch(view: View[Any], row: BaseModel) -> Batch:
    return Batch(
        service="people",
        source=TopicPartition("people.in", 0),
        expected_position=None,
        position=1,
        writes={view: {view.key_of(row): view.image(row)}},
    )


def test_the_views_guide_examples_run() -> None:
    guide = Path(__file__).resolve().parent.parent / "docs" / "views.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    assert len(blocks) == 5
    namespace: dict[str, object] = {"__name__": "views_guide"}
    for block in blocks:
        exec(compile(block, str(guide), "exec"), namespace)
    library = namespace["library"]
    assert isinstance(library, Service)
    assert [migration.name for migration in library.migrations] == [
        "create_loans",
        "index_loans_by_reader",
    ]
