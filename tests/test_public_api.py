"""The curated public surface of `loglane`."""

from __future__ import annotations

import loglane


def test_all_is_sorted_and_every_name_is_importable() -> None:
    assert loglane.__all__ == sorted(loglane.__all__)
    for name in loglane.__all__:
        assert hasattr(loglane, name), name
