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


def appended(
    request_id: str, offset: int, fingerprint: str = "f1", *, at: float | None = None
) -> AcceptedCommand:
    """A command appended at `offset`; `at` is its claim's owner token, if it claimed."""
    return AcceptedCommand(
        request_id=request_id,
        fingerprint=fingerprint,
        position=Position("shop.in", 1, offset),
        accepted_at=time.time() if at is None else at,
    )


def claimed(request_id: str, at: float, fingerprint: str = "f1") -> AcceptedCommand:
    return AcceptedCommand(
        request_id=request_id, fingerprint=fingerprint, position=None, accepted_at=at
    )


# Owner tokens far apart: with stale_after=60 a claim at LATER takes over one at EARLIER.
EARLIER, LATER = 1_000.0, 2_000.0


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
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER)
        recorded = [appended("r1", 7, at=EARLIER), appended("r2", 8)]
        assert store.record_accepted(service, recorded) == recorded
        again = store.claim(service, "r1", "f1", stale_after=60)
        assert again is not None
        assert again.position == Position("shop.in", 1, 7)
        found = store.accepted(service, "r2")
        assert found is not None
        assert found.position == Position("shop.in", 1, 8)
        assert store.accepted(service, "r3") is None

    def test_a_claim_left_without_a_position_is_taken_over_when_stale(self, store: Store) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER)
        young = store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER + 30)
        assert young == claimed("r1", at=EARLIER)
        assert store.claim(service, "r1", "f1", stale_after=60, accepted_at=LATER) is None
        assert store.accepted(service, "r1") == claimed("r1", at=LATER)

    def test_a_claim_is_not_taken_over_by_one_with_the_same_owner_token(self, store: Store) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER)
        # however stale it looks, two holders must never share a token
        same = store.claim(service, "r1", "f1", stale_after=-1, accepted_at=EARLIER)
        assert same == claimed("r1", at=EARLIER)

    def test_a_stale_claim_of_another_command_is_not_taken_over(self, store: Store) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER)
        found = store.claim(service, "r1", "f2", stale_after=60, accepted_at=LATER)
        assert found == claimed("r1", at=EARLIER)

    def test_a_claim_taken_over_can_no_longer_be_released_by_its_first_holder(
        self, store: Store
    ) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER)
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=LATER)
        store.release(service, claimed("r1", at=EARLIER))
        assert store.accepted(service, "r1") == claimed("r1", at=LATER)

    def test_a_claim_taken_over_can_no_longer_be_recorded_by_its_first_holder(
        self, store: Store
    ) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER)
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=LATER)
        # the first holder's slow append went through after all: the new holder keeps the id
        late = store.record_accepted(service, [appended("r1", 7, at=EARLIER)])
        assert late == [claimed("r1", at=LATER)]
        newest = appended("r1", 8, at=LATER)
        assert store.record_accepted(service, [newest]) == [newest]
        assert store.record_accepted(service, [appended("r1", 7, at=EARLIER)]) == [newest]
        assert store.accepted(service, "r1") == newest

    def test_of_concurrent_takeovers_of_a_stale_claim_exactly_one_is_granted(
        self, store: Store
    ) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER)
        granted: list[float] = []
        start = threading.Barrier(8)

        def take_over(at: float) -> None:
            start.wait()
            if store.claim(service, "r1", "f1", stale_after=60, accepted_at=at) is None:
                granted.append(at)

        threads = [threading.Thread(target=take_over, args=(LATER + n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        [winner] = granted
        assert store.accepted(service, "r1") == claimed("r1", at=winner)

    def test_an_appended_command_is_never_taken_over(self, store: Store) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER)
        store.record_accepted(service, [appended("r1", 3, at=EARLIER)])
        kept = store.claim(service, "r1", "f1", stale_after=60, accepted_at=LATER)
        assert kept is not None
        assert kept.position == Position("shop.in", 1, 3)

    def test_a_released_claim_can_be_claimed_again_but_a_recorded_one_stays(
        self, store: Store
    ) -> None:
        service = fresh_service()
        store.claim(service, "r1", "f1", stale_after=60, accepted_at=EARLIER)
        store.release(service, claimed("r1", at=EARLIER))
        assert store.claim(service, "r1", "f1", stale_after=60) is None
        store.record_accepted(service, [appended("r2", 1, at=EARLIER)])
        store.release(service, claimed("r2", at=EARLIER))
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
