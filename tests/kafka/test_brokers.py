"""The brokers a test session starts take their ports from the configured one, never fixed ones."""

from __future__ import annotations

import os

import pytest

from tests.kafka_broker import ManagedBroker


def test_every_broker_port_follows_loglane_kafka_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGLANE_KAFKA_PORT", "29092")
    monkeypatch.setenv("LOGLANE_KAFKA_CONTROLLER_PORT", "19093")  # set for another broker
    shared, chaos = ManagedBroker.numbered(0), ManagedBroker.numbered(1)
    ports = [
        {**os.environ, **broker.env}[name]
        for broker in (shared, chaos)
        for name in ("LOGLANE_KAFKA_PORT", "LOGLANE_KAFKA_CONTROLLER_PORT")
    ]
    assert ports == ["29092", "29093", "29094", "29095"]
    assert chaos.broker().bootstrap == "127.0.0.1:29094"
