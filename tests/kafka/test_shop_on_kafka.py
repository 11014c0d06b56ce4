"""The example shop end to end with Kafka as the log, and SQLite or PostgreSQL as the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loglane import RequestStatus
from loglane.examples.shop import (
    CreateCustomer,
    PlaceOrder,
    customers,
    customers_view,
    known_customers,
    orders,
    orders_view,
)
from loglane.testing import LandscapeTest
from tests.kafka_broker import Broker, delete_landscape
from tests.postgres import schemas, with_schema

pytestmark = pytest.mark.kafka

FAST_GROUPS = {"consumer.session.timeout.ms": 6000, "consumer.heartbeat.interval.ms": 500}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shop_urls(
    request: pytest.FixtureRequest, kafka_broker: Broker, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """Log and store URLs: Kafka with SQLite views, and Kafka with PostgreSQL views."""
    delete_landscape(kafka_broker, [customers, orders])
    log_url = kafka_broker.url(**FAST_GROUPS)
    if request.param == "sqlite":
        yield log_url, f"sqlite:///{tmp_path}/{{service}}.db"
    else:
        postgres_url = request.getfixturevalue("postgres_url")
        with schemas(postgres_url) as prefix:
            yield log_url, with_schema(postgres_url, prefix + "{service}")
    delete_landscape(kafka_broker, [customers, orders])


def test_the_shop_materializes_customers_and_orders_through_kafka(
    shop_urls: tuple[str, str],
) -> None:
    log_url, db_url = shop_urls
    with LandscapeTest(customers, orders, log_url=log_url, db_url=db_url) as shop:
        created = [
            shop.send(CreateCustomer(customer_id=f"c{i}", name=f"Customer {i}")) for i in range(20)
        ]
        duplicate = shop.send(CreateCustomer(customer_id="c0", name="Again"))
        shop.run_until_quiet()
        placed = [
            shop.send(PlaceOrder(order_id=f"o{i}", customer_id=f"c{i % 20}", amount_cents=100 + i))
            for i in range(40)
        ]
        stranger = shop.send(PlaceOrder(order_id="o-x", customer_id="nobody", amount_cents=1))
        shop.run_until_quiet()

        assert len(shop.view(customers_view).all()) == 20
        assert shop.view(customers_view).get("c0").name == "Customer 0"  # type: ignore[union-attr]
        assert len(shop.view(known_customers).all()) == 20
        assert len(shop.view(orders_view).all()) == 40
        assert [o.order_id for o in shop.view(orders_view).all(customer_id="c3")] == ["o23", "o3"]
        for request_id in created + placed:
            outcome = shop.outcome(request_id)
            assert outcome is not None
            assert outcome.status is RequestStatus.DONE
        for request_id in (duplicate, stranger):
            outcome = shop.outcome(request_id)
            assert outcome is not None
            assert outcome.status is RequestStatus.REJECTED
        assert sorted(e.type for e in shop.events("customers")) == ["CustomerCreated"] * 20 + [
            "loglane.Rejected"
        ]
        assert len([e for e in shop.events("orders") if e.type == "OrderPlaced"]) == 40
        assert shop.dead_letters("customers") == shop.dead_letters("orders") == []


def test_a_restarted_shop_resumes_from_its_stored_positions_and_applies_nothing_twice(
    shop_urls: tuple[str, str],
) -> None:
    log_url, db_url = shop_urls
    with LandscapeTest(customers, orders, log_url=log_url, db_url=db_url) as shop:
        shop.send(CreateCustomer(customer_id="c1", name="Ada"))
        shop.run_until_quiet()  # orders learns of c1 from customers.out before its first order
        first = shop.send(PlaceOrder(order_id="o1", customer_id="c1", amount_cents=500))
        shop.run_until_quiet()
        assert shop.outcome(first).status is RequestStatus.DONE  # type: ignore[union-attr]
    with LandscapeTest(customers, orders, log_url=log_url, db_url=db_url) as shop:
        again = shop.send(PlaceOrder(order_id="o1", customer_id="c1", amount_cents=500))
        second = shop.send(PlaceOrder(order_id="o2", customer_id="c1", amount_cents=700))
        shop.run_until_quiet()
        assert [o.order_id for o in shop.view(orders_view).all()] == ["o1", "o2"]
        assert shop.outcome(again).status is RequestStatus.REJECTED  # type: ignore[union-attr]
        assert shop.outcome(second).status is RequestStatus.DONE  # type: ignore[union-attr]
        assert [e.type for e in shop.events("customers")] == ["CustomerCreated"]
