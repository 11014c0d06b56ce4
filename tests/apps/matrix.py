"""The crash matrix's landscape: every effect folds from the input, poison and shared rows too.

`matrix_bank` takes numbered deposits per account (keyed by account), applies them in order
and emits `Deposited`; every deposit also adds to its region's row in `totals`, a row that
handlers of every partition write (a shared row). `Broadcast` is a keyless command (its
handler declares no `key=`, so its records have no key): it writes a row of its own, adds to
the shared `totals["broadcast"]` and emits a keyless `Announced`.

`matrix_books` follows `matrix_bank.out`: per account it counts the `Deposited` events it
applies (a duplicate that slipped past dedupe, or a lost event, shows), keeps per-region
totals of its own (shared rows again) and counts each `Announced` it hears.

The input (`matrix_input`) mixes in, at 1 in 1,000 each, poison of every kind the worker must
dead-letter without stalling the partition: a record that is not a CloudEvent, an unknown
command type, an invalid payload, a handler that always raises, and two events whose store
write fails inside the commit (SQL that fails in every dialect, and a NUL character, which
PostgreSQL refuses in text and JSONB; SQLite stores it, so there it is a good event).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from loglane import Event, Landscape, Retry, Service, Transaction
from loglane.commands import command_message
from loglane.envelope import COMMAND_SOURCE, Envelope, now_rfc3339, output_event_id
from loglane.records import Message, Record
from loglane.views import View

# quick retries: a handler that always raises costs three attempts each time its batch runs
RETRY = Retry(attempts=3, backoff_seconds=0.01, max_backoff_seconds=0.05)
# Poison shares keys with good commands here, and the folds expect every good command
# applied: these services pass dead letters over (parking has tests of its own).
bank = Service("matrix_bank", partitions=6, retry=RETRY, park_keys=False)
books = Service("matrix_books", partitions=6, retry=RETRY, park_keys=False)

REGIONS = ("eu", "us", "ap")
BROADCAST = "broadcast"
BAD_SQL = "bad sql"
BAD_SQL_STATEMENT = "INSERT INTO matrix_no_such_table VALUES (1)"
NUL_TEXT = "nul \u0000 inside"
POISON_KINDS = (
    "not_cloudevent",
    "unknown_type",
    "invalid_payload",
    "handler_raises",
    "bad_sql",
    "nul_text",
)
POISON_EVERY = 1000  # each kind once in every 1,000 commands
BROADCAST_SHARE = 0.05
OUTSIDE = "crash-matrix"  # the ce_source of poison posted by hand, not through Loglane


class Deposit(Event):
    account: str
    region: str
    seq: int
    amount: int


class Broadcast(Event):
    notice: str
    amount: int


class Explode(Event):
    account: str


class Annotate(Event):
    note_id: str
    account: str
    text: str


class Deposited(Event):
    account: str
    region: str
    seq: int
    amount: int
    balance: int


class Announced(Event):
    notice: str
    amount: int


class Account(BaseModel):
    account: str
    balance: int = 0
    last_seq: int = 0
    applied: int = 0
    out_of_order: int = 0


class Total(BaseModel):
    region: str
    amount: int = 0
    events: int = 0


class Notice(BaseModel):
    notice: str
    amount: int


class Note(BaseModel):
    note_id: str
    account: str
    text: str


class Tally(BaseModel):
    account: str
    events: int = 0
    amount: int = 0
    last_seq: int = 0
    out_of_order: int = 0


class Heard(BaseModel):
    notice: str
    times: int = 0


accounts = bank.view("accounts", Account, key="account")
totals = bank.view("totals", Total, key="region")
notices = bank.view("notices", Notice, key="notice")
notes = bank.view("notes", Note, key="note_id")
tallies = books.view("tallies", Tally, key="account")
regions = books.view("regions", Total, key="region")
heard = books.view("heard", Heard, key="notice")
SHARED = (totals, regions)  # views whose rows handlers of every partition write


def _add_to_total(tx: Transaction, view: View[Total], region: str, amount: int) -> None:
    """Read-modify-write of a row that handlers of every partition share."""
    total = tx[view].get(region) or Total(region=region)
    tx[view].put(Total(region=region, amount=total.amount + amount, events=total.events + 1))


@bank.handles(Deposit, key="account")
def deposit(command: Deposit, tx: Transaction) -> None:
    account = tx[accounts].get(command.account) or Account(account=command.account)
    balance = account.balance + command.amount
    tx[accounts].put(
        Account(
            account=command.account,
            balance=balance,
            last_seq=command.seq,
            applied=account.applied + 1,
            out_of_order=account.out_of_order + (command.seq != account.last_seq + 1),
        )
    )
    _add_to_total(tx, totals, command.region, command.amount)
    tx.emit(
        Deposited(
            account=command.account,
            region=command.region,
            seq=command.seq,
            amount=command.amount,
            balance=balance,
        )
    )


@bank.handles(Broadcast)
def broadcast(command: Broadcast, tx: Transaction) -> None:
    tx[notices].put(Notice(notice=command.notice, amount=command.amount))
    _add_to_total(tx, totals, BROADCAST, command.amount)
    tx.emit(Announced(notice=command.notice, amount=command.amount))


@bank.handles(Explode, key="account")
def explode(command: Explode, tx: Transaction) -> None:
    raise RuntimeError(f"Explode({command.account}) always fails")


@bank.handles(Annotate, key="account")
def annotate(command: Annotate, tx: Transaction) -> None:
    tx[notes].put(Note(note_id=command.note_id, account=command.account, text=command.text))
    if command.text == BAD_SQL:
        tx.execute(BAD_SQL_STATEMENT)  # fails at COMMIT time, in SQLite and PostgreSQL alike


@books.handles(Deposited, source=bank.name)
def tally(event: Deposited, tx: Transaction) -> None:
    found = tx[tallies].get(event.account) or Tally(account=event.account)
    tx[tallies].put(
        Tally(
            account=event.account,
            events=found.events + 1,
            amount=found.amount + event.amount,
            last_seq=event.seq,
            out_of_order=found.out_of_order + (event.seq != found.last_seq + 1),
        )
    )
    _add_to_total(tx, regions, event.region, event.amount)


@books.handles(Announced, source=bank.name)
def hear(event: Announced, tx: Transaction) -> None:
    found = tx[heard].get(event.notice) or Heard(notice=event.notice)
    tx[heard].put(Heard(notice=event.notice, times=found.times + 1))
    _add_to_total(tx, regions, BROADCAST, event.amount)


landscape = Landscape([bank, books])


# -- the input and its fold ------------------------------------------------------------------


@dataclass
class Fold:
    """What the views, topics and request outcomes must hold once the input is drained."""

    rows: dict[View[Any], dict[str, BaseModel]] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)  # ids on matrix_bank.out
    done: list[str] = field(default_factory=list)  # request ids that must end "done"
    # (ce_source, request id) of the commands that must end "failed": posted through
    # Loglane, or by hand, as a producer outside it would
    failed: list[tuple[str, str]] = field(default_factory=list)
    poison: dict[str, str] = field(default_factory=dict)  # identity -> kind, all in the DLQ

    def put(self, view: View[Any], key: str, row: BaseModel) -> None:
        self.rows.setdefault(view, {})[key] = row

    def get(self, view: View[Any], key: str) -> Any:
        return self.rows.setdefault(view, {}).get(key)

    def add_to_total(self, view: View[Total], region: str, amount: int) -> None:
        total = self.get(view, region) or Total(region=region)
        self.put(
            view,
            region,
            Total(region=region, amount=total.amount + amount, events=total.events + 1),
        )


@dataclass
class MatrixInput:
    messages: list[Message]
    fold: Fold
    kinds: dict[str, int]  # how many commands of each kind


def identity(record: Record | Message) -> str:
    """What names an input record in the DLQ: its CloudEvents id, or for a record that is not
    a CloudEvent, the marker in its value."""
    headers = dict(record.headers)
    if "ce_id" in headers:
        return headers["ce_id"].decode()
    try:
        return "raw:" + str(json.loads(record.value)["poison"])
    except (ValueError, KeyError, TypeError):
        return "raw:" + record.value.hex()


def _kinds(count: int, poison: Sequence[str], rng: random.Random) -> Iterator[str]:
    """The kind of each command: each kind of `poison` once per 1,000, some broadcasts."""
    for start in range(0, count, POISON_EVERY):
        size = min(POISON_EVERY, count - start)
        block = ["broadcast" if rng.random() < BROADCAST_SHARE else "deposit" for _ in range(size)]
        slots = rng.sample(range(size), min(size, len(poison)))
        for slot, kind in zip(slots, poison[: len(slots)], strict=True):
            block[slot] = kind
        yield from block


def matrix_input(
    count: int,
    keys: int,
    *,
    nul_is_poison: bool,
    poison: Sequence[str] = POISON_KINDS,
    seed: int = 8,
) -> MatrixInput:
    """`count` commands over `keys` accounts, reproducible from `seed`, with their fold.

    `nul_is_poison` says whether the store refuses a NUL character (PostgreSQL does);
    `poison` chooses the kinds of poison mixed in.
    """
    unknown = set(poison) - set(POISON_KINDS)
    if unknown:
        raise ValueError(f"unknown poison kinds {sorted(unknown)}; known: {POISON_KINDS}")
    rng = random.Random(seed)
    fold = Fold()
    messages: list[Message] = []
    kinds: dict[str, int] = {}
    seqs: dict[str, int] = {}

    def request_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def post(command: Event) -> str:
        rid, message = command_message(bank, command, request_id=request_id())
        messages.append(message)
        return rid

    def envelope(account: str, event_type: str, data: dict[str, Any]) -> str:
        """A record posted by hand, as a producer outside Python would."""
        rid = request_id()
        headers = Envelope(
            id=rid,
            type=event_type,
            source=OUTSIDE,
            time=now_rfc3339(),
            data=b"",
            correlation_id=rid,
        ).headers()
        messages.append(
            Message(bank.input_topic, account.encode(), json.dumps(data).encode(), headers)
        )
        return rid

    for index, kind in enumerate(_kinds(count, tuple(poison), rng)):
        kinds[kind] = kinds.get(kind, 0) + 1
        account = f"acct-{rng.randrange(keys)}"
        amount = rng.randint(1, 100)
        if kind == "deposit":
            seq = seqs[account] = seqs.get(account, 0) + 1
            region = REGIONS[int(account.removeprefix("acct-")) % len(REGIONS)]
            rid = post(Deposit(account=account, region=region, seq=seq, amount=amount))
            fold.done.append(rid)
            fold.outputs.add(output_event_id(bank.name, rid, 0))
            before = fold.get(accounts, account) or Account(account=account)
            balance = before.balance + amount
            fold.put(
                accounts,
                account,
                Account(account=account, balance=balance, last_seq=seq, applied=seq),
            )
            fold.add_to_total(totals, region, amount)
            tally = fold.get(tallies, account) or Tally(account=account)
            fold.put(
                tallies,
                account,
                Tally(account=account, events=seq, amount=tally.amount + amount, last_seq=seq),
            )
            fold.add_to_total(regions, region, amount)
        elif kind == "broadcast":
            notice = f"notice-{index}"
            rid = post(Broadcast(notice=notice, amount=amount))
            fold.done.append(rid)
            fold.outputs.add(output_event_id(bank.name, rid, 0))
            fold.put(notices, notice, Notice(notice=notice, amount=amount))
            fold.add_to_total(totals, BROADCAST, amount)
            fold.put(heard, notice, Heard(notice=notice, times=1))
            fold.add_to_total(regions, BROADCAST, amount)
        elif kind == "not_cloudevent":
            value = json.dumps({"poison": f"not-a-cloudevent-{index}", "account": account})
            message = Message(
                bank.input_topic,
                account.encode(),
                value.encode(),
                (("content-type", b"application/json"),),
            )
            messages.append(message)
            fold.poison[identity(message)] = kind
        elif kind == "unknown_type":
            rid = envelope(account, "Withdraw", {"account": account, "amount": amount})
            fold.poison[rid] = kind
            fold.failed.append((OUTSIDE, rid))
        elif kind == "invalid_payload":
            data = {"account": account, "region": "eu", "seq": "next", "amount": "lots"}
            rid = envelope(account, Deposit.event_type, data)
            fold.poison[rid] = kind
            fold.failed.append((OUTSIDE, rid))
        elif kind == "handler_raises":
            rid = post(Explode(account=account))
            fold.poison[rid] = kind
            fold.failed.append((COMMAND_SOURCE, rid))
        elif kind == "bad_sql":
            rid = post(Annotate(note_id=f"note-{index}", account=account, text=BAD_SQL))
            fold.poison[rid] = kind
            fold.failed.append((COMMAND_SOURCE, rid))
        elif kind == "nul_text":
            note_id = f"note-{index}"
            rid = post(Annotate(note_id=note_id, account=account, text=NUL_TEXT))
            if nul_is_poison:
                fold.poison[rid] = kind
                fold.failed.append((COMMAND_SOURCE, rid))
            else:
                fold.done.append(rid)
                fold.put(notes, note_id, Note(note_id=note_id, account=account, text=NUL_TEXT))
    for view in (*bank.views.values(), *books.views.values()):
        fold.rows.setdefault(view, {})
    return MatrixInput(messages=messages, fold=fold, kinds=kinds)
