"""Fault injection: crash a worker process at an exact step boundary, for crash tests.

Off unless the environment variable `LOGLANE_CRASH` names one or more steps, each with the
chance of dying there, e.g. `LOGLANE_CRASH=in_commit:0.01,after_publish:0.02`. Each time the
worker passes a named step it draws, and on a hit the process kills itself with SIGKILL: no
`finally`, no flush, no goodbye, exactly as `kill -9` would. When the variable is unset,
`crash_point` is a function that returns at once.

The steps, in the order one pass of the worker meets them:

    after_poll          records polled, nothing handled yet
    in_commit           inside the store transaction, after the batches' writes, before COMMIT
                        (PostgreSQL: with the COMMIT sent, not confirmed)
    after_commit        the store's commit confirmed; its outbox rows not handed to the log yet
    after_publish       the log acknowledged outbox rows; not yet marked published
    after_log_commit    the log's consumer offsets committed
    in_assign           partitions assigned; positions read, nothing republished yet
    in_revoke           partitions being revoked, before their state is dropped
"""

from __future__ import annotations

import os
import random
import signal

STEPS = (
    "after_poll",
    "in_commit",
    "after_commit",
    "after_publish",
    "after_log_commit",
    "in_assign",
    "in_revoke",
)
VARIABLE = "LOGLANE_CRASH"


def _parse(spec: str) -> dict[str, float]:
    chances: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        step, _, chance = item.partition(":")
        if step not in STEPS:
            raise ValueError(f"{VARIABLE}: unknown step {step!r}; steps: {', '.join(STEPS)}")
        try:
            chances[step] = float(chance or "1")
        except ValueError:
            raise ValueError(f"{VARIABLE}: {item!r} needs a chance, e.g. {step}:0.01") from None
    return chances


_CHANCES = _parse(os.environ.get(VARIABLE, ""))


def _crash_point(step: str) -> None:
    chance = _CHANCES.get(step)
    if chance is not None and random.random() < chance:
        os.kill(os.getpid(), signal.SIGKILL)


def _no_crash(step: str) -> None:
    return None


crash_point = _crash_point if _CHANCES else _no_crash
"""Call at a step boundary: with `LOGLANE_CRASH` naming the step, maybe die there."""
