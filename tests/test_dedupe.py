"""The window of recently applied event ids."""

from __future__ import annotations

from loglane.dedupe import AppliedWindow


def test_ids_are_remembered_within_the_window_and_forgotten_beyond_it() -> None:
    window = AppliedWindow(100, [(50, ["a"]), (120, ["b"])])
    assert "a" in window
    window.add(170, ["c"])
    assert "a" not in window
    assert "b" in window
    assert "c" in window
    assert window.horizon(170) == 70
