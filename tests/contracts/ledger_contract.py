"""What the HTTP API needs from a store: the command ledger and request outcomes with events.

A backend's test class subclasses `LedgerContract` and provides the `store` fixture (a
fresh, open store), as for `StoreContract`. Each test uses its own service name.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from loglane.records import Message, Position, TopicPartition
from loglane.stores.base import AcceptedCommand, Batch, RequestOutcome, RequestStatus, Store


def fresh_service() -> str:
    return f"api_{uuid.uuid4().hex[:8]}"


def appended(request_id: str, offset: int, fingerprint: str = "f1") -> AcceptedCommand:
    return AcceptedCommand(
        request_id=request_id,
        fingerprint=fingerprint,
        position=Position("shop.in", 1, offset),
        accepted_at=time.time(),
    )


class LedgerContract:
    @pytest.fixture
    def store(self) -> Iterator[Store]:
        raise NotImplementedError("a backend's test class provides the store fixture")

    def test_the_first_claim_of_a_request_id_is_granted(self, store: Store) -> None:
        service = fresh_service()
        assert store.claim(service, "r1", "f1", stale_after=60) is None
        held = store.claim(service, "r1", "f1", stale_after=60)
        assert held is not None
        assert held.position is None
        assert held.fingerprint == "f1"

    def test_a_recorded_command_is_returned_with_its_position(self, store: Store) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60)
        store.record_accepted(service, [appended("r1", 7), appended("r2", 8)])
        again = store.claim(service, "r1", "f1", stale_after=60)
        assert again is not None
        assert again.position == Position("shop.in", 1, 7)
        found = store.accepted(service, "r2")
        assert found is not None
        assert found.position == Position("shop.in", 1, 8)
        assert store.accepted(service, "r3") is None

    def test_a_claim_left_without_a_position_is_taken_over_when_stale(self, store: Store) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60)
        # a negative age makes every claim stale, with no sleeping for the clock to move
        assert store.claim(service, "r1", "f2", stale_after=-1) is None
        taken = store.accepted(service, "r1")
        assert taken is not None
        assert taken.fingerprint == "f2"

    def test_an_appended_command_is_never_taken_over(self, store: Store) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60)
        store.record_accepted(service, [appended("r1", 3)])
        kept = store.claim(service, "r1", "f1", stale_after=-1)
        assert kept is not None
        assert kept.position == Position("shop.in", 1, 3)

    def test_a_released_claim_can_be_claimed_again_but_a_recorded_one_stays(
        self, store: Store
    ) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60)
        store.release(service, "r1")
        assert store.claim(service, "r1", "f1", stale_after=60) is None
        store.record_accepted(service, [appended("r2", 1)])
        store.release(service, "r2")
        assert store.accepted(service, "r2") is not None

    def test_services_keep_separate_ledgers(self, store: Store) -> None:
        first, second = fresh_service(), fresh_service()
        assert store.claim(first, "r1", "f1", stale_after=60) is None
        assert store.claim(second, "r1", "f1", stale_after=60) is None

    def test_of_concurrent_claims_of_one_request_id_exactly_one_is_granted(
        self, store: Store
    ) -> None:
        service = fresh_service()
        granted: list[bool] = []
        start = threading.Barrier(8)

        def claim() -> None:
            start.wait()
            granted.append(store.claim(service, "r1", "f1", stale_after=60) is None)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(granted) == [False] * 7 + [True]

    def test_outcomes_keep_their_events_and_are_read_in_bulk(self, store: Store) -> None:
        service = fresh_service()
        event = Message(
            "shop.out", b"\xffkey", b'{"n": 1}', (("ce_id", b"e1"), ("ce_type", b"Counted"))
        )
        store.commit(
            Batch(
                service=service,
                source=TopicPartition("shop.in", 0),
                expected_position=None,
                position=2,
                requests=[
                    RequestOutcome(
                        request_id="r1",
                        status=RequestStatus.DONE,
                        event_ids=("e1",),
                        events=(event,),
                    ),
                    RequestOutcome(
                        request_id="r2", status=RequestStatus.FAILED, detail="bad input"
                    ),
                ],
            )
        )
        found = store.requests(service, ["r1", "r2", "r3"])
        assert set(found) == {"r1", "r2"}
        assert found["r1"].events == (event,)
        assert found["r2"].detail == "bad input"
        assert store.request(service, "r1") == found["r1"]
