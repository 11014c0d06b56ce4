"""The process set-up a worker or API process makes once its workers run."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from loglane.runner import YOUNG_OBJECTS_PER_COLLECTION, freeze_startup_objects


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


def test_the_collector_runs_once_a_batch_could_have_ended_not_every_few_hundred_objects(
    collector: None,
) -> None:
    gc.set_threshold(700, 10, 10)
    freeze_startup_objects()
    assert gc.get_threshold() == (YOUNG_OBJECTS_PER_COLLECTION, 10, 10)
    assert gc.get_freeze_count() > 0


def test_a_program_that_turned_automatic_collection_off_keeps_it_off(collector: None) -> None:
    gc.set_threshold(0)
    freeze_startup_objects()
    assert gc.get_threshold()[0] == 0
