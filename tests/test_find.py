"""`tx[view].find(...)`: handlers look rows up by indexed fields, seeing their batch's writes.

Commands sent together are handled in one batch, before anything is committed: what
`Shelve` finds shows what find sees of the rows put and deleted earlier in the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from loglane import Event, Service, Transaction
from loglane.dlq import ERROR_HEADER
from loglane.testing import LandscapeTest
from tests.postgres import schemas, with_schema


class Book(BaseModel):
    book_id: str
    author: str
    shelf: int = 0
    title: str = ""


class Add(Event):
    book_id: str
    author: str
    shelf: int = 0


class Remove(Event):
    book_id: str


class Shelve(Event):
    """Move every book of `author` to `shelf`, and say which were found."""

    author: str
    shelf: int
    limit: int = 100


class Found(Event):
    book_ids: list[str]


class FindByTitle(Event):
    title: str


library = Service("library", partitions=1)
books = library.view("books", Book, key="book_id", indexes=["author", "shelf"])


@library.handles(Add, key="book_id")
def add(command: Add, tx: Transaction) -> None:
    tx[books].put(Book(book_id=command.book_id, author=command.author, shelf=command.shelf))


@library.handles(Remove, key="book_id")
def remove(command: Remove, tx: Transaction) -> None:
    tx[books].delete(command.book_id)


@library.handles(Shelve)
def shelve(command: Shelve, tx: Transaction) -> None:
    found = tx[books].find(author=command.author, limit=command.limit)
    for book in found:
        tx[books].put(book.model_copy(update={"shelf": command.shelf}))
    tx.emit(Found(book_ids=[book.book_id for book in found]))


@library.handles(FindByTitle)
def find_by_title(command: FindByTitle, tx: Transaction) -> None:
    tx[books].find(title=command.title)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LandscapeTest]:
    db_url = f"sqlite:///{tmp_path}/{{service}}.db"
    log_url = f"embedded:///{tmp_path}/log.db"
    if request.param == "sqlite":
        with LandscapeTest(library, log_url=log_url, db_url=db_url) as landscape:
            yield landscape
        return
    url: str = request.getfixturevalue("postgres_url")
    with (
        schemas(url) as prefix,
        LandscapeTest(
            library, log_url=log_url, db_url=with_schema(url, prefix + "{service}")
        ) as landscape,
    ):
        yield landscape


def found(test: LandscapeTest) -> list[list[str]]:
    return [
        Found.model_validate_json(event.data).book_ids
        for event in test.events("library")
        if event.type == "Found"
    ]


def test_find_sees_rows_put_earlier_in_the_batch(test: LandscapeTest) -> None:
    test.send(Add(book_id="b2", author="ada"))
    test.send(Add(book_id="b1", author="ada"))
    test.send(Add(book_id="b3", author="alan"))
    test.send(Shelve(author="ada", shelf=7))
    assert test.run_until_quiet() == 4  # in one batch, nothing committed before Shelve
    assert found(test) == [["b1", "b2"]]
    assert [book.book_id for book in test.view(books).all(shelf=7)] == ["b1", "b2"]


def test_find_merges_committed_rows_with_the_batchs_puts_and_deletes(
    test: LandscapeTest,
) -> None:
    for book_id in ["b1", "b2", "b3", "b4"]:
        test.send(Add(book_id=book_id, author="ada"))
    test.run_until_quiet()
    test.send(Remove(book_id="b1"))  # deleted earlier in the batch: not found
    test.send(Add(book_id="b3", author="alan"))  # no longer matches
    test.send(Add(book_id="b0", author="ada"))  # new, and first in key order
    test.send(Shelve(author="ada", shelf=1))
    test.send(Shelve(author="ada", shelf=2, limit=2))  # sees what the first Shelve put
    test.run_until_quiet()
    assert found(test) == [["b0", "b2", "b4"], ["b0", "b2"]]
    assert {book.book_id: book.shelf for book in test.view(books).all(author="ada")} == {
        "b0": 2,
        "b2": 2,
        "b4": 1,
    }


def test_find_reaches_past_committed_rows_the_batch_moved_away_to_fill_its_limit(
    test: LandscapeTest,
) -> None:
    for book_id in ["b1", "b2", "b3", "b4"]:
        test.send(Add(book_id=book_id, author="ada"))
    test.run_until_quiet()
    test.send(Add(book_id="b1", author="alan"))
    test.send(Remove(book_id="b2"))
    test.send(Shelve(author="ada", shelf=1, limit=1))
    test.run_until_quiet()
    assert found(test) == [["b3"]]


def test_find_on_a_field_without_an_index_dead_letters_the_event_naming_the_indexed_fields(
    test: LandscapeTest,
) -> None:
    test.send(FindByTitle(title="Notes"))
    test.run_until_quiet()
    [letter] = test.dead_letters("library")
    reason = dict(letter.headers)[ERROR_HEADER].decode()
    assert "cannot filter on title" in reason
    assert "indexed fields: book_id, author, shelf" in reason
