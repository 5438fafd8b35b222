"""Network round trips to PostgreSQL (pg8000), the production meta store: on Aurora each one is ~0.3-1 ms of a request.
An uncached entitlement check (the Lambda design) made 56 of them; now 15 (adapters/sql.fewer_round_trips, reads in
autocommit, SqlEntitlementStore.ledger_rows). COMMIT and ROLLBACK travel as simple queries with their meaning kept; a
pooled connection idle past the window is checked before use and a dead one replaced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from billow.adapters import sql
from billow.adapters.sql import SqlMetaStore
from tests.entitlements.conftest import Billow, harness


class Wire:
    """Counts pg8000's round trips (each wait for the server's answer) and the statements sent, by protocol."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import pg8000.core as core

        self.round_trips = 0
        self.sent: list[tuple[str, str]] = []
        handle, simple, unnamed = (core.CoreConnection.handle_messages, core.CoreConnection.execute_simple,
                                   core.CoreConnection.execute_unnamed)

        def handle_messages(conn: Any, context: Any) -> Any:
            self.round_trips += 1
            return handle(conn, context)

        def execute_simple(conn: Any, statement: str) -> Any:
            self.sent.append(("simple", statement.strip().upper()))
            return simple(conn, statement)

        def execute_unnamed(conn: Any, statement: str, *a: Any, **k: Any) -> Any:
            self.sent.append(("extended", statement.strip().split()[0].upper()))
            return unnamed(conn, statement, *a, **k)

        monkeypatch.setattr(core.CoreConnection, "handle_messages", handle_messages)
        monkeypatch.setattr(core.CoreConnection, "execute_simple", execute_simple)
        monkeypatch.setattr(core.CoreConnection, "execute_unnamed", execute_unnamed)

    def reset(self) -> None:
        self.round_trips = 0
        self.sent.clear()


@pytest.fixture
def billow_on_pg(pg_database: str, tmp_path: Path) -> Iterator[Billow]:
    """The entitlement tests' harness (handlers in process, usage in memory) on a PostgreSQL meta store."""
    with harness(tmp_path, "default", meta_store_url=pg_database) as b:
        b.clock.set("2026-02-14T12:37:00Z")
        yield b


def test_an_uncached_entitlement_check_makes_15_round_trips(billow_on_pg: Billow,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    b = billow_on_pg
    b.ok("POST", "/api/v1/features", {"key": "ai_tokens", "name": "AI tokens", "meterSlug": "tokens"})
    path = "/api/v1/subjects/customer_1/entitlements"
    b.ok("POST", path, {"type": "metered", "featureKey": "ai_tokens", "issueAfterReset": 100,
                        "measureUsageFrom": "2026-01-01T00:00:00Z",
                        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})
    for amount, days in ((500, 10), (1000, 30)):
        b.ok("POST", path + "/ai_tokens/grants", {"amount": amount, "effectiveAt": "2026-02-03T00:00:00Z",
                                                  "expiration": {"duration": "DAY", "count": days}})
    b.c.balance_cache = None  # every check computed from the stores (the Lambda design)
    first = b.value("customer_1", "ai_tokens")  # (its snapshot saved: later checks read it)
    wire = Wire(monkeypatch)
    for _ in range(3):
        wire.reset()
        assert b.value("customer_1", "ai_tokens") == first
        # Five store reads (subject, its customer's other subjects, entitlement, meter, and the entitlement's resets,
        # snapshot and grants at once), each its statement alone (Parse, Describe, Bind/Execute: 3 round trips) in
        # autocommit: no BEGIN, no ROLLBACK, no resetting of the connection's level, no check of a connection used
        # a moment ago. Before: 7 reads of 8 round trips, 56.
        assert wire.round_trips == 15, wire.sent
        assert [kind for kind, _ in wire.sent] == ["extended"] * 5, wire.sent


def _dbapi_creator(url: str) -> Any:
    """Connections from pg8000.dbapi, as the IAM login makes them (adapters/rds_iam.IamConnector), not the legacy
    module SQLAlchemy's URL picks."""
    import pg8000.dbapi

    u = sa.make_url(url)
    return lambda: pg8000.dbapi.connect(user=u.username, password=u.password, host=u.host, port=u.port,
                                        database=u.database)


READ_ONLY_ROUTES = ["/api/v1/meters", "/api/v1/meters/tokens", "/api/v1/customers", "/api/v1/features",
                    "/api/v1/subjects", "/api/v1/subjects/customer_1/entitlements", "/api/v1/grants",
                    "/api/v1/plans", "/api/v1/addons", "/api/v1/billing/profiles", "/api/v1/billing/invoices",
                    "/api/v1/apps", "/api/v1/notification/channels", "/api/v1/notification/rules",
                    "/api/v1/notification/events", "/api/v2/entitlements"]


def test_read_only_requests_and_ingest_send_their_statements_alone(billow_on_pg: Billow,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only API request, and an ingest request (its meters looked up), send their statements and nothing
    else: no BEGIN, no ROLLBACK, no reset of the connection (each was two or four round trips more a statement)."""
    b = billow_on_pg
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["customer_1"]}})
    for path in READ_ONLY_ROUTES:
        b.ok("GET", path)  # (first requests read what a container keeps)
    wire = Wire(monkeypatch)
    for path in READ_ONLY_ROUTES:
        wire.reset()
        b.ok("GET", path)
        assert {kind for kind, _ in wire.sent} <= {"extended"}, (path, wire.sent)
        assert wire.round_trips == 3 * len(wire.sent), (path, wire.sent)
    wire.reset()
    b.usage(1, "2026-02-14T12:00:00Z")  # (POST /api/v1/events through the ingest handler and the sink in process)
    assert wire.sent and {kind for kind, _ in wire.sent} == {"extended"}, wire.sent


@pytest.mark.parametrize("module", ["legacy", "dbapi"])
def test_commit_and_rollback_as_simple_queries_keep_their_meaning(pg_database: str, module: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqlMetaStore(pg_database, **({"creator": _dbapi_creator(pg_database)} if module == "dbapi" else {}))
    other = sa.create_engine(pg_database)
    try:
        with store.engine.begin() as c:
            c.execute(sa.text("CREATE TABLE probe (k int, CONSTRAINT probe_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"))
        wire = Wire(monkeypatch)
        with store.engine.begin() as c:
            c.execute(sa.text("INSERT INTO probe VALUES (1)"))
        assert ("simple", "COMMIT") in wire.sent and ("extended", "COMMIT") not in wire.sent
        with pytest.raises(RuntimeError), store.engine.begin() as c:
            c.execute(sa.text("INSERT INTO probe VALUES (2)"))
            raise RuntimeError("a write that fails half-way")
        # A violation found only at COMMIT (a deferred constraint) still raises (a DatabaseError, as pg8000's own
        # COMMIT raised it), and stores nothing.
        with pytest.raises(sa.exc.DatabaseError, match="probe_k"), store.engine.begin() as c:
            c.execute(sa.text("INSERT INTO probe VALUES (3)"))
            c.execute(sa.text("INSERT INTO probe VALUES (1)"))
        with other.connect() as o:  # what another connection sees
            assert o.execute(sa.text("SELECT k FROM probe ORDER BY k")).scalars().all() == [1]
        with store.engine.connect() as c:  # the pool's connections are fine after both
            assert c.execute(sa.text("SELECT count(*) FROM probe")).scalar() == 1
    finally:
        other.dispose()
        store.close()


def _backend_pid(store: SqlMetaStore) -> int:
    with store.engine.connect() as c:
        return int(c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    admin = sa.create_engine(url)
    try:
        with admin.begin() as c:
            # (waits up to 5 s for the backend to be gone: pg_terminate_backend only signals it)
            assert c.execute(sa.text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid}).scalar()
    finally:
        admin.dispose()


def test_a_connection_idle_past_the_window_is_checked_and_a_dead_one_replaced(
        pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqlMetaStore(pg_database)
    try:
        store.migrate()
        pid = _backend_pid(store)
        _terminate(pg_database, pid)  # (a fail-over, a proxy's idle timeout) while the connection sat in the pool
        monkeypatch.setattr(sql, "PING_AFTER_IDLE_S", 0.0)  # it has been idle past the window
        wire = Wire(monkeypatch)
        assert store.list_meters("default") == []  # answered, on a new connection
        assert ("simple", ";") in wire.sent
        assert _backend_pid(store) != pid
    finally:
        store.close()


def test_a_connection_that_dies_within_the_window_fails_one_call_and_the_pool_recovers(
        pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The price of not checking a connection used a moment ago: one call fails, and SQLAlchemy then drops every
    connection of the pool opened before the failure, so the next call connects anew."""
    store = SqlMetaStore(pg_database)
    try:
        store.migrate()
        monkeypatch.setattr(sql, "PING_AFTER_IDLE_S", 3600.0)
        _terminate(pg_database, _backend_pid(store))
        with pytest.raises(sa.exc.DBAPIError) as failed:
            store.list_meters("default")
        assert failed.value.connection_invalidated
        assert store.list_meters("default") == []
    finally:
        store.close()


@pytest.mark.parametrize("module", ["legacy", "dbapi"])
def test_a_read_in_autocommit_leaves_no_autocommit_behind(pg_database: str, module: str) -> None:
    """The one pooled connection serves a read in autocommit, then a write that fails half-way: the write is still
    one transaction (nothing of it stored), and a session level set for one use is the default again after it."""
    store = SqlMetaStore(pg_database, pool_size=1, max_overflow=0,
                         **({"creator": _dbapi_creator(pg_database)} if module == "dbapi" else {}))
    try:
        with store.engine.begin() as c:
            c.execute(sa.text("CREATE TABLE probe (k int)"))
        for _ in range(2):
            with store.reads.connect() as c:
                assert c.execute(sa.text("SELECT count(*) FROM probe")).scalar() == 0
                assert c.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
            with pytest.raises(RuntimeError), store.engine.begin() as c:
                assert not c.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
                c.execute(sa.text("INSERT INTO probe VALUES (1)"))
                raise RuntimeError("a write that fails half-way")
            with store.engine.connect() as c:
                assert c.execute(sa.text("SELECT count(*) FROM probe")).scalar() == 0
        level = "SHOW transaction_isolation"
        with store.engine.execution_options(isolation_level="SERIALIZABLE").connect() as c:
            assert c.execute(sa.text(level)).scalar() == "serializable"
        with store.engine.connect() as c:
            assert c.execute(sa.text(level)).scalar() == "read committed"
        with store.reads.connect() as c:
            c.execute(sa.text("SELECT 1"))
        with store.engine.connect() as c:
            assert c.execute(sa.text(level)).scalar() == "read committed"
    finally:
        store.close()
