"""The PostgreSQL store passes the store contract and keeps PostgreSQL's own promises."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel

from loglane.errors import (
    BackendUnavailableError,
    BadURLError,
    BatchConflictError,
    BatchRejectedError,
    ConfigurationError,
)
from loglane.records import Message, TopicPartition, encode_headers, encode_messages
from loglane.service import Service
from loglane.stores import _postgres_arrays as arrays
from loglane.stores._batch import OUTCOME_COLUMNS
from loglane.stores._postgres_batch import COLUMN_TYPES
from loglane.stores._postgres_tables import migrate
from loglane.stores.base import Batch, RequestOutcome, RequestStatus, Statement, Store
from loglane.stores.postgres import MIGRATIONS, CommitNotice, PostgresStore
from loglane.urls import open_store
from tests.conftest import eventually
from tests.contracts.ledger_contract import LedgerContract
from tests.contracts.store_contract import (
    SOURCE,
    Account,
    StoreContract,
    check_moved_into_outcome_rows,
    commit_sent_ahead,
    declare_bank,
)
from tests.postgres import schemas, with_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def prefix(postgres_url: str) -> Iterator[str]:
    with schemas(postgres_url) as prefix:
        yield prefix


@pytest.fixture
def store(postgres_url: str, prefix: str) -> Iterator[PostgresStore]:
    store = PostgresStore(postgres_url, schema=prefix + "{service}")
    yield store
    store.close()


class TestPostgresStore(StoreContract):
    store_type: type[PostgresStore] = PostgresStore

    @pytest.fixture
    def store(self, postgres_url: str, prefix: str) -> Iterator[Store]:
        store = self.store_type(postgres_url, schema=prefix + "{service}")
        yield store
        store.close()


class _SendingCommitsAhead(PostgresStore):
    """Commits as the worker makes them (`commit_sent_ahead`)."""

    def commit(self, batch: Batch) -> int | None:
        return commit_sent_ahead(self, batch)


class TestPostgresStoreSendingCommitsAhead(TestPostgresStore):
    store_type = _SendingCommitsAhead


class TestPostgresLedger(LedgerContract):
    @pytest.fixture
    def store(self, postgres_url: str, prefix: str) -> Iterator[Store]:
        store = PostgresStore(postgres_url, schema=prefix + "{service}")
        yield store
        store.close()


def test_the_change_marker_moves_when_another_process_commits(
    postgres_url: str, prefix: str
) -> None:
    watching = PostgresStore(postgres_url, schema=prefix + "{service}")
    writing = PostgresStore(postgres_url, schema=prefix + "{service}")
    try:
        bank = declare_bank(writing)
        assert watching.positions(bank.name) == {}
        first = watching.change_marker()
        # it moves once when its thread starts following the service
        eventually(lambda: watching.change_marker() != first, message="the marker follows")
        before = watching.change_marker()
        writing.commit(bank.batch(None, 1))
        eventually(lambda: watching.change_marker() != before, message="the marker moved")
    finally:
        watching.close()
        writing.close()


def test_a_schema_made_by_an_older_loglane_is_migrated_on_first_use(
    postgres_url: str, prefix: str
) -> None:
    schema = prefix + "old"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate(conn, schema, MIGRATIONS[:1])
        conn.execute(
            f'INSERT INTO "{schema}".loglane_requests VALUES (%s, %s, %s, %s, %s)',
            ("old", "r1", "done", '["e1"]', None),
        )
    store = PostgresStore(postgres_url, schema=prefix + "{service}")
    try:
        assert store.request("old", "r1") == RequestOutcome(
            request_id="r1", status=RequestStatus.DONE, event_ids=("e1",)
        )
        assert store.claim("old", "r2", "f", stale_after=60) is None
    finally:
        store.close()
    versions = sql(postgres_url, f'SELECT version FROM "{schema}".loglane_schema_version')
    assert versions == [(m.version,) for m in MIGRATIONS]


def test_a_schema_of_migration_6_keeps_its_outcomes_and_what_waited_in_its_outbox(
    postgres_url: str, prefix: str
) -> None:
    schema = prefix + "six"
    published = Message("six.out", b"k", b"published", (("ce_id", b"e1"),))
    waiting = Message("six.out", None, b"waiting", (("ce_id", b"e2"),))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        migrate(conn, schema, MIGRATIONS[:6])
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("INSERT INTO loglane_positions VALUES ('six', 'six.in', 0, 7, NULL)")
        conn.execute(
            "INSERT INTO loglane_outbox (service, source_topic, source_partition, topic, key, "
            "value, headers) VALUES ('six', 'six.in', 0, 'six.out', %s, %s, %s)",
            (waiting.key, waiting.value, encode_headers(waiting.headers)),
        )
        conn.execute(
            "INSERT INTO loglane_requests VALUES "
            "('six', 'r1', 'done', '[\"e1\"]', NULL, %s, 'loglane', 0)",
            (encode_messages([published]),),
        )
    store = PostgresStore(postgres_url, schema=prefix + "{service}")
    try:
        source = TopicPartition("six.in", 0)
        check_moved_into_outcome_rows(store, "six", source, published, waiting)
    finally:
        store.close()


def test_published_messages_of_no_command_are_deleted_and_outcomes_kept(
    store: PostgresStore, postgres_url: str, prefix: str
) -> None:
    bank = declare_bank(store)
    emitted = Message("bank.out", b"k", b"emitted", ())
    outcome = RequestOutcome(request_id="r", status=RequestStatus.DONE, events=(emitted,))
    lone = [Message("bank.out", b"k", f"event {n}".encode(), ()) for n in range(3)]
    seq = store.commit(
        bank.batch(None, 4, outbox=[lone[0], emitted, *lone[1:]], requests=[outcome])
    )
    store.delete_outbox(bank.name, {SOURCE: seq or 0})
    rows = sql(
        postgres_url,
        f'SELECT request_id, messages IS NOT NULL FROM "{prefix}{bank.name}".loglane_outcomes',
    )
    assert rows == [("r", True)]
    assert store.request(bank.name, "r") == outcome


def sql(url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def test_views_are_tables_users_can_query_with_their_own_sql(
    store: PostgresStore, postgres_url: str, prefix: str
) -> None:
    bank = declare_bank(store)
    ada = Account(account_id="a1", owner="ada", balance=10)
    store.commit(bank.batch(None, 1, writes={bank.accounts: {"a1": ada}}))
    schema = prefix + bank.name
    assert sql(postgres_url, f'SELECT account_id, owner, active, doc FROM "{schema}".accounts') == [
        ("a1", "ada", True, {"account_id": "a1", "owner": "ada", "balance": 10, "active": True})
    ]
    columns = sql(
        postgres_url,
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name IN ('accounts', 'counters') "
        "ORDER BY table_name, ordinal_position",
        (schema,),
    )
    assert columns == [
        ("accounts", "account_id", "text"),
        ("accounts", "doc", "jsonb"),
        ("accounts", "doc_version", "integer"),
        ("accounts", "owner", "text"),
        ("accounts", "active", "boolean"),
        ("counters", "number", "bigint"),
        ("counters", "doc", "jsonb"),
        ("counters", "doc_version", "integer"),
    ]
    positions = sql(postgres_url, f'SELECT service, "offset" FROM "{schema}".loglane_positions')
    assert positions == [(bank.name, 1)]


def test_a_filtered_query_can_use_the_fields_index(
    store: PostgresStore, postgres_url: str, prefix: str
) -> None:
    bank = declare_bank(store)
    with psycopg.connect(postgres_url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            f'EXPLAIN SELECT doc FROM "{prefix}{bank.name}".accounts WHERE owner = %s '
            "ORDER BY account_id",
            ("ada",),
        ).fetchall()
    assert "accounts_by_owner" in "\n".join(line for (line,) in plan)


def test_loglanes_tables_are_versioned_and_a_newer_version_is_refused(
    store: PostgresStore, postgres_url: str, prefix: str
) -> None:
    bank = declare_bank(store)
    table = f'"{prefix}{bank.name}".loglane_schema_version'
    versions = sql(postgres_url, f"SELECT version FROM {table} ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]
    sql(postgres_url, f"INSERT INTO {table} (version, description) VALUES (999, 'future')")
    newer = PostgresStore(postgres_url, schema=prefix + "{service}")
    try:
        with pytest.raises(ConfigurationError, match="newer Loglane"):
            newer.positions(bank.name)
    finally:
        newer.close()


def test_loglanes_own_tables_are_keyed_bytewise_and_indexed_only_as_their_reads_need(
    store: PostgresStore, postgres_url: str, prefix: str
) -> None:
    bank = declare_bank(store)
    schema = prefix + bank.name
    keyed_by_text_in_the_databases_collation = sql(
        postgres_url,
        "SELECT c.relname, a.attname FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey) "
        "JOIN pg_collation co ON co.oid = a.attcollation "
        "WHERE c.relnamespace = %s::regnamespace "
        "AND c.relname LIKE 'loglane%%' AND co.collname <> 'C'",
        (schema,),
    )
    assert keyed_by_text_in_the_databases_collation == []
    access_method = sql(
        postgres_url,
        "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
        "WHERE c.relnamespace = %s::regnamespace AND c.relname = 'loglane_outcomes_by_time'",
        (schema,),
    )
    assert access_method == [("brin",)]
    # outcomes are indexed for the reads they have (no primary key); applied ids are not
    # compressed
    indexes = sql(
        postgres_url,
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s "
        "AND tablename = 'loglane_outcomes' ORDER BY indexname",
        (schema,),
    )
    assert indexes == [
        ("loglane_outcomes_by_request",),
        ("loglane_outcomes_by_time",),
        ("loglane_outcomes_of_no_request",),
        ("loglane_outcomes_to_publish",),
    ]
    storage = sql(
        postgres_url,
        "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attname = 'event_ids'",
        (f'"{schema}".loglane_applied',),
    )
    assert storage == [("e",)]


def test_workers_starting_at_once_create_a_schema_once(postgres_url: str, prefix: str) -> None:
    service = Service("crowd")
    service.view("accounts", Account, key="account_id", indexes=["owner"])
    stores = [PostgresStore(postgres_url, schema=prefix + "{service}") for _ in range(6)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def prepare(store: PostgresStore) -> None:
        start.wait()
        try:
            store.prepare(service.name, list(service.views.values()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for store in stores:
        store.close()
    assert errors == []
    table = f'"{prefix}crowd".loglane_schema_version'
    assert sql(postgres_url, f"SELECT count(*) FROM {table}") == [(len(MIGRATIONS),)]


def test_a_commit_notifies_listeners_of_its_position_and_requests(store: PostgresStore) -> None:
    bank = declare_bank(store)
    with store.listen(bank.name) as listener:
        done = RequestOutcome(request_id="r1", status=RequestStatus.DONE)
        store.commit(bank.batch(None, 4, requests=[done]))
        notices = listener.wait(timeout=60)
    assert notices == [
        CommitNotice(
            service=bank.name, topic="bank.in", partition=2, position=4, request_ids=("r1",)
        )
    ]


def test_a_batch_with_too_many_requests_to_name_notifies_without_them(
    store: PostgresStore,
) -> None:
    bank = declare_bank(store)
    outcomes = [
        RequestOutcome(request_id=str(uuid.uuid4()), status=RequestStatus.DONE) for _ in range(1000)
    ]
    with store.listen(bank.name) as listener:
        store.commit(bank.batch(None, 1000, requests=outcomes))
        (notice,) = listener.wait(timeout=60)
    assert (notice.position, notice.request_ids) == (1000, None)


def test_a_listener_hears_only_its_own_schemas(postgres_url: str, prefix: str) -> None:
    ours = PostgresStore(postgres_url, schema=prefix + "ours_{service}")
    theirs = PostgresStore(postgres_url, schema=prefix + "theirs_{service}")
    bank = declare_bank(ours)
    theirs.prepare(bank.name, list(bank.service.views.values()))
    try:
        with ours.listen(bank.name) as listener:
            theirs.commit(bank.batch(None, 7))
            ours.commit(bank.batch(None, 3))
            notices: list[CommitNotice] = []
            while not notices:
                notices = listener.wait(timeout=60)
    finally:
        ours.close()
        theirs.close()
    assert [notice.position for notice in notices] == [3]


def test_a_handlers_statements_commit_with_the_batch_and_not_with_a_stale_one(
    store: PostgresStore, postgres_url: str, prefix: str
) -> None:
    bank = declare_bank(store)
    table = f'"{prefix}{bank.name}".hits'
    sql(postgres_url, f"CREATE TABLE {table} (n INTEGER NOT NULL)")
    insert = [Statement(f"INSERT INTO {table} VALUES (%s)", (1,))]
    store.commit(bank.batch(None, 1, statements=insert))
    with pytest.raises(Exception, match="no longer 0"):
        store.commit(bank.batch(0, 2, statements=insert))
    assert sql(postgres_url, f"SELECT n FROM {table}") == [(1,)]


def test_a_failed_commit_leaves_nothing_and_the_next_one_succeeds(
    postgres_url: str, prefix: str
) -> None:
    store = PostgresStore(postgres_url, schema=prefix + "{service}")
    bank = declare_bank(store)
    row = Account(account_id="a1", owner="ada", balance=1)
    broken = [Statement("INSERT INTO no_such_table VALUES (1)")]
    try:
        with pytest.raises(BatchRejectedError, match="no_such_table"):
            store.commit(
                bank.batch(None, 1, writes={bank.accounts: {"a1": row}}, statements=broken)
            )
        assert store.get(bank.accounts, "a1") is None
        store.commit(bank.batch(None, 1, writes={bank.accounts: {"a1": row}}))
        assert store.get(bank.accounts, "a1") == row
    finally:
        store.close()


def test_a_commit_sent_ahead_lands_before_anyone_waits_for_it(store: PostgresStore) -> None:
    bank = declare_bank(store)
    store.commit(bank.batch(None, 1))
    row = Account(account_id="a1", owner="ada", balance=1)
    with store.transaction(bank.name, {SOURCE: 1}) as tx:
        sent = tx.send_all([bank.batch(1, 2, writes={bank.accounts: {"a1": row}})])
    eventually(lambda: store.get(bank.accounts, "a1") == row, message="the unconfirmed commit")
    assert sent.wait() == {}
    assert store.positions(bank.name) == {SOURCE: 2}


def test_a_commit_sent_ahead_that_fails_at_commit_raises_and_leaves_nothing(
    store: PostgresStore, postgres_url: str, prefix: str
) -> None:
    """A constraint checked at COMMIT fails the commit after it was sent. The error is the
    confirmation's, or `send_all`'s if psycopg read the server's answer while sending (a
    fast server, and psycopg's lowest supported version, do); the worker takes either."""
    bank = declare_bank(store)
    store.commit(bank.batch(None, 1))
    table = f'"{prefix}{bank.name}".vetoes'
    sql(postgres_url, f"CREATE TABLE {table} (n INTEGER UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    sql(postgres_url, f"INSERT INTO {table} VALUES (1)")
    row = Account(account_id="a1", owner="ada", balance=1)
    vetoed = [Statement("INSERT INTO vetoes VALUES (1)")]

    def send_and_confirm() -> None:
        with store.transaction(bank.name, {SOURCE: 1}) as tx:
            sent = tx.send_all(
                [bank.batch(1, 2, writes={bank.accounts: {"a1": row}}, statements=vetoed)]
            )
        sent.wait()

    with pytest.raises(BatchRejectedError, match="vetoes_n_key"):
        send_and_confirm()
    assert store.get(bank.accounts, "a1") is None
    assert store.positions(bank.name) == {SOURCE: 1}
    store.commit(bank.batch(1, 2, writes={bank.accounts: {"a1": row}}))
    assert store.get(bank.accounts, "a1") == row


def test_duplicate_request_ids_in_one_batch_keep_the_last_outcome(store: PostgresStore) -> None:
    bank = declare_bank(store)
    first = RequestOutcome(request_id="r", status=RequestStatus.FAILED, detail="first")
    last = RequestOutcome(request_id="r", status=RequestStatus.DONE, event_ids=("e",))
    store.commit(bank.batch(None, 2, requests=[first, last]))
    assert store.request(bank.name, "r") == last


class Visit(BaseModel):
    visit_id: str
    at: datetime
    score: int | None = None


def test_fields_of_other_types_are_indexed_as_their_json_text(store: PostgresStore) -> None:
    service = Service(f"visits_{uuid.uuid4().hex[:8]}")
    visits = service.view("visits", Visit, key="visit_id", indexes=["at", "score"])
    store.prepare(service.name, [visits])
    noon = datetime(2026, 1, 2, 12, tzinfo=UTC)
    rows = {"v1": Visit(visit_id="v1", at=noon, score=5), "v2": Visit(visit_id="v2", at=noon)}
    store.commit(
        Batch(
            service=service.name,
            source=TopicPartition("visits.in", 0),
            expected_position=None,
            position=1,
            writes={visits: {key: visits.image(row) for key, row in rows.items()}},
        )
    )
    assert [v.visit_id for v in store.query(visits, where={"at": noon})] == ["v1", "v2"]
    assert store.query(visits, where={"score": 5}) == [rows["v1"]]


def test_a_view_no_worker_has_prepared_reads_as_empty_until_a_batch_writes_it(
    store: PostgresStore,
) -> None:
    service = Service(f"unborn_{uuid.uuid4().hex[:8]}")
    accounts = service.view("accounts", Account, key="account_id", indexes=["owner"])
    assert store.get(accounts, "a1") is None
    assert store.query(accounts, where={"owner": "ada"}) == []
    ada = Account(account_id="a1", owner="ada", balance=1)
    store.commit(
        Batch(
            service=service.name,
            source=TopicPartition(service.input_topic, 0),
            expected_position=None,
            position=1,
            writes={accounts: {"a1": accounts.image(ada)}},
        )
    )
    assert store.query(accounts, where={"owner": "ada"}) == [ada]


def test_a_lost_connection_is_reported_as_unavailable_and_the_next_call_reconnects(
    postgres_url: str, prefix: str
) -> None:
    name = f"loglane-test-{uuid.uuid4().hex[:8]}"
    url = f"{postgres_url}?application_name={name}"
    store = PostgresStore(url, schema=prefix + "{service}")
    try:
        bank = declare_bank(store)
        store.commit(bank.batch(None, 1))
        killed = sql(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        assert killed
        assert all(ok for (ok,) in killed)
        with pytest.raises(BackendUnavailableError, match="is unavailable"):
            store.positions(bank.name)
        assert store.positions(bank.name) == {TopicPartition("bank.in", 2): 1}
    finally:
        store.close()


def test_an_unreachable_server_is_one_clear_line_without_the_password() -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        open_store("postgresql://loglane:hunter2@127.0.0.1:1/shop", "customers")
    message = str(caught.value)
    assert "\n" not in message
    assert "loglane@127.0.0.1:1/shop" in message
    assert "Connection refused" in message
    assert "scripts/postgres start" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://h/db?pool_size=many", "pool_size='many' is not a valid value"),
        ("postgresql://h/db?colour=blue", 'invalid URI query parameter: "colour"'),
    ],
)
def test_a_bad_postgresql_url_is_refused_before_connecting(url: str, says: str) -> None:
    with pytest.raises(BadURLError, match=says):
        open_store(url, "customers")


def test_a_url_names_the_schema_and_passes_the_rest_to_libpq(
    postgres_url: str, prefix: str
) -> None:
    url = with_schema(postgres_url, prefix + "{service}_views") + "&connect_timeout=5"
    store = open_store(url, "customers")
    try:
        assert isinstance(store, PostgresStore)
        assert store.schema("customers") == f"{prefix}customers_views"
        assert store.positions("customers") == {}
    finally:
        store.close()


def test_the_usual_pg_variables_fill_in_a_bare_url(
    postgres_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = conninfo_to_dict(postgres_url)
    for variable, name in [
        ("PGHOST", "host"),
        ("PGPORT", "port"),
        ("PGUSER", "user"),
        ("PGPASSWORD", "password"),
        ("PGDATABASE", "dbname"),
    ]:
        if name in params:
            monkeypatch.setenv(variable, str(params[name]))
    store = open_store(f"postgresql://?schema={prefix}{{service}}", "customers")
    try:
        assert store.positions("customers") == {}
    finally:
        store.close()


def test_two_batches_that_deadlock_on_rows_lose_the_race_as_a_conflict(
    store: PostgresStore,
) -> None:
    """PostgreSQL breaks the deadlock by aborting one; that one is a BatchConflictError (the
    worker runs the batch again), never a handler's failure or an outage."""
    bank = declare_bank(store)
    both_hold_one = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def read_in_turn(partition: int, first: str, second: str) -> None:
        source = TopicPartition("bank.in", partition)
        try:
            with store.transaction(bank.name, {source: None}) as tx:
                tx.get(bank.accounts, first)
                both_hold_one.wait()
                tx.get(bank.accounts, second)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=read_in_turn, args=(0, "a", "b")),
        threading.Thread(target=read_in_turn, args=(1, "b", "a")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [type(error) for error in errors] == [BatchConflictError]
    assert "deadlock" in str(errors[0])


def test_rows_are_sent_as_arrays_of_the_types_of_loglanes_tables(postgres_url: str) -> None:
    with schemas(postgres_url) as prefix:
        store = PostgresStore(postgres_url, schema=prefix + "{service}")
        store.prepare("copies", [])
        with psycopg.connect(postgres_url) as conn:
            for table, columns in (("loglane_outcomes", OUTCOME_COLUMNS),):
                types = [
                    conn.execute(
                        "SELECT format_type(atttypid, NULL) FROM pg_attribute "
                        "WHERE attrelid = %s::regclass AND attname = %s",
                        (f'"{prefix}copies".{table}', column),
                    ).fetchone()
                    for column in columns
                ]
                names = {"double precision": "float8"}
                assert (
                    tuple(names.get(row[0], row[0]) for row in types if row) == COLUMN_TYPES[table]
                )
        store.close()


def test_rows_sent_as_arrays_come_back_as_they_were_sent(postgres_url: str) -> None:
    """Columns of one value go once, NULLs and non-ASCII text survive, and rows all alike
    are inserted as many times as given."""
    rows = [
        ("same", "ünï", b"\x00\xff", None, 1, '{"a": 1}', -(2**63)),
        ("same", None, b"", 3.5, -7, '{"b": [2]}', None),
        ("same", "x", None, 4.0, 2**31 - 1, "{}", 2**63 - 1),
    ]
    kinds = ("text", "text", "bytea", "double precision", "integer", "jsonb", "bigint")
    columns = ("a", "b", "c", "d", "e", "f", "g")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TEMPORARY TABLE arrays "
            "(a text, b text, c bytea, d float8, e int, f jsonb, g bigint)"
        )
        cursor = conn.cursor()
        arrays.register(cursor.adapters)
        for batch in (rows, [rows[0]] * 2):
            cursor.execute(*arrays.insert("arrays", columns, kinds, batch))
        stored = conn.execute("SELECT a, b, c, d, e, f::text, g FROM arrays").fetchall()
        with pytest.raises(OverflowError):  # the store's write refuses the batch for it
            arrays.insert("arrays", ("e",), ("integer",), [(2**31,), (1,)])
    expected = [(a, b, c, d, e, json.dumps(json.loads(f)), g) for a, b, c, d, e, f, g in rows]
    assert sorted(stored, key=repr) == sorted([*expected, *[expected[0]] * 2], key=repr)
