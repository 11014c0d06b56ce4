"""The shop: the seed's `customers` service, and `orders`, which trusts only known customers.

`customers` takes `CreateCustomer` commands and keeps the `customers` view. `orders` follows
`customers.out` to learn which customers exist (its own `known_customers` view, so it never
calls another service) and accepts `PlaceOrder` only for them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from loglane import Event, Landscape, Service, Transaction

customers = Service("customers", partitions=4)
orders = Service("orders", partitions=4)


class CreateCustomer(Event):
    customer_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)


class CustomerCreated(Event):
    customer_id: str
    name: str


class Customer(BaseModel):
    customer_id: str
    name: str


customers_view = customers.view("customers", Customer, key="customer_id", indexes=["name"])


@customers.handles(CreateCustomer, key="customer_id")
def create_customer(command: CreateCustomer, tx: Transaction) -> None:
    if tx[customers_view].get(command.customer_id) is not None:
        tx.reject(f"customer {command.customer_id} exists")
        return
    tx[customers_view].put(Customer(customer_id=command.customer_id, name=command.name))
    tx.emit(CustomerCreated(customer_id=command.customer_id, name=command.name))


class PlaceOrder(Event):
    order_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    amount_cents: int = Field(gt=0)


class OrderPlaced(Event):
    order_id: str
    customer_id: str
    amount_cents: int


class KnownCustomer(BaseModel):
    customer_id: str


class Order(BaseModel):
    order_id: str
    customer_id: str
    amount_cents: int


known_customers = orders.view("known_customers", KnownCustomer, key="customer_id")
orders_view = orders.view("orders", Order, key="order_id", indexes=["customer_id"])


@orders.handles(CustomerCreated, source="customers")
def learn_customer(event: CustomerCreated, tx: Transaction) -> None:
    tx[known_customers].put(KnownCustomer(customer_id=event.customer_id))


@orders.handles(PlaceOrder, key="order_id")
def place_order(command: PlaceOrder, tx: Transaction) -> None:
    if tx[known_customers].get(command.customer_id) is None:
        tx.reject(f"unknown customer {command.customer_id}")
        return
    if tx[orders_view].get(command.order_id) is not None:
        tx.reject(f"order {command.order_id} exists")
        return
    order = Order(**command.model_dump())
    tx[orders_view].put(order)
    tx.emit(OrderPlaced(**command.model_dump()))


landscape = Landscape([customers, orders])
