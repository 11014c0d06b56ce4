"""The peers workload as Loglane's README teaches it, in two services of one name.

`by_view`: a view of accounts keyed by the key; the handler reads the row
(`tx[accounts].get`), puts the updated one and emits one event. `by_sql`: the same
read-modify-write as one `tx.execute` upsert on a table of the service's schema (the runner
creates it: Loglane creates view tables only). The services are built by functions only so
the benchmarks can name them per run. Both run as `loglane worker`:

    PEERS_SERVICE=p9 .venv/bin/loglane worker bench/peers/loglane_app.py:by_view --service p9 \
        --log kafka://127.0.0.1:19092 --db 'postgresql://...?schema=p9'

The service's name (so its topics `<name>.in`, `<name>.out`) comes from PEERS_SERVICE and its
partitions from PEERS_PARTITIONS (default 4), so each run gets fresh topics and tables.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from loglane import Event, Service, Transaction

NAME = os.environ.get("PEERS_SERVICE", "peers")
PARTITIONS = int(os.environ.get("PEERS_PARTITIONS", "4"))


class Credit(Event):  # a command on <name>.in
    key: str
    seq: int
    amount: int
    note: str


class Credited(Event):  # a fact on <name>.out
    key: str
    seq: int
    amount: int


class Account(BaseModel):  # a row of the view
    key: str
    count: int
    total: int


def view_service(name: str, partitions: int) -> Service:
    """The service whose handler keeps each key's account in a view."""
    service = Service(name, partitions=partitions)
    accounts = service.view("accounts", Account, key="key")

    @service.handles(Credit, key="key")
    def credit(command: Credit, tx: Transaction) -> None:
        row = tx[accounts].get(command.key) or Account(key=command.key, count=0, total=0)
        tx[accounts].put(
            Account(key=row.key, count=row.count + 1, total=row.total + command.amount)
        )
        tx.emit(Credited(key=command.key, seq=command.seq, amount=command.amount))

    return service


UPSERT = (
    "INSERT INTO accounts AS t (key, count, total) VALUES (%s, 1, %s) "
    "ON CONFLICT (key) DO UPDATE SET count = t.count + 1, total = t.total + excluded.total"
)


def sql_service(name: str, partitions: int) -> Service:
    """The service whose handler upserts each key's account with its own SQL."""
    service = Service(name, partitions=partitions)

    @service.handles(Credit, key="key")
    def credit(command: Credit, tx: Transaction) -> None:
        tx.execute(UPSERT, (command.key, command.amount))
        tx.emit(Credited(key=command.key, seq=command.seq, amount=command.amount))

    return service


by_view = view_service(NAME, PARTITIONS)
by_sql = sql_service(NAME, PARTITIONS)
