"""The shop, with one more command on `customers` whose handler fails while a file exists:
dead letters on demand, which succeed once re-driven after the file is gone."""

from __future__ import annotations

import os
from pathlib import Path

from loglane import Event, Transaction
from loglane.examples.shop import (
    Customer,
    CustomerCreated,
    customers,
    customers_view,
    landscape,
)

BROKEN = Path(os.environ.get("LOGLANE_TEST_BROKEN", "/nonexistent/loglane-broken"))


class ImportCustomer(Event):
    """Take a customer over from the old system."""

    customer_id: str
    name: str


@customers.handles(ImportCustomer, key="customer_id")
def import_customer(command: ImportCustomer, tx: Transaction) -> None:
    if BROKEN.exists():
        raise RuntimeError(f"the old system is down ({BROKEN} exists)")
    tx[customers_view].put(Customer(customer_id=command.customer_id, name=command.name))
    tx.emit(CustomerCreated(customer_id=command.customer_id, name=command.name))


__all__ = ["landscape"]
