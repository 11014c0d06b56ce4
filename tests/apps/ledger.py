"""A landscape built to be checked: every effect can be folded from the input.

`ledger` applies numbered deposits per account and records whether each arrived in order;
`audit` follows `ledger.out` and counts the `Deposited` events it applies, so a duplicate
that slipped through, or a lost event, shows in its counts.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from loglane import Event, Landscape, Service, Transaction

ledger = Service("ledger", partitions=4)
audit = Service("audit", partitions=4)


class Deposit(Event):
    account: str
    seq: int
    amount: int


class Deposited(Event):
    account: str
    seq: int
    balance: int


class Account(BaseModel):
    account: str
    balance: int = 0
    last_seq: int = 0
    applied: int = 0
    out_of_order: int = 0


class Tally(BaseModel):
    account: str
    events: int = 0
    last_seq: int = 0
    out_of_order: int = 0


accounts = ledger.view("accounts", Account, key="account")
tallies = audit.view("tallies", Tally, key="account")


@ledger.handles(Deposit, key="account")
def deposit(command: Deposit, tx: Transaction) -> None:
    account = tx[accounts].get(command.account) or Account(account=command.account)
    updated = Account(
        account=command.account,
        balance=account.balance + command.amount,
        last_seq=command.seq,
        applied=account.applied + 1,
        out_of_order=account.out_of_order + (command.seq != account.last_seq + 1),
    )
    tx[accounts].put(updated)
    tx.emit(Deposited(account=command.account, seq=command.seq, balance=updated.balance))


@audit.handles(Deposited, source="ledger")
def count(event: Deposited, tx: Transaction) -> None:
    tally = tx[tallies].get(event.account) or Tally(account=event.account)
    tx[tallies].put(
        Tally(
            account=event.account,
            events=tally.events + 1,
            last_seq=event.seq,
            out_of_order=tally.out_of_order + (event.seq != tally.last_seq + 1),
        )
    )


landscape = Landscape([ledger, audit])


def deposits(accounts_count: int, per_account: int) -> list[Deposit]:
    """Deposits interleaved across accounts; account i gets amounts 1..per_account in order."""
    return [
        Deposit(account=f"acct-{a}", seq=seq, amount=seq)
        for seq in range(1, per_account + 1)
        for a in range(accounts_count)
    ]


def assert_folded(
    read_account: Callable[[str], Account | None],
    read_tally: Callable[[str], Tally | None],
    accounts_count: int,
    per_account: int,
) -> None:
    """Every account holds exactly the fold of its deposits, applied in order and once, and the
    audit counted each `Deposited` once, in order."""
    total = per_account * (per_account + 1) // 2
    for a in range(accounts_count):
        account = read_account(f"acct-{a}")
        assert account is not None
        assert (account.balance, account.applied, account.last_seq, account.out_of_order) == (
            total,
            per_account,
            per_account,
            0,
        ), account
        tally = read_tally(f"acct-{a}")
        assert tally is not None
        assert (tally.events, tally.last_seq, tally.out_of_order) == (
            per_account,
            per_account,
            0,
        ), tally
