"""Versioned meta-store migrations (billow.migrations, Alembic) on SQLite and a real PostgreSQL: a database at
the previous revision with a row in every table upgrades to head with nothing lost; a database made by the
stores' `create_all` before migrations existed is adopted; concurrent upgrades on PostgreSQL queue on the
advisory lock; head is exactly the stores' models. Each PostgreSQL test gets a database of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from billow import migrations
from billow.adapters import (
    sql,
    sql_apps,
    sql_backtests,
    sql_billing,
    sql_catalog,
    sql_entitlements,
    sql_keys,
    sql_llm_prices,
    sql_notifications,
    sql_portal,
    sql_receipts,
)
from billow.adapters.sql import SqlMetaStore

MODELS = (sql, sql_apps, sql_backtests, sql_billing, sql_catalog, sql_entitlements, sql_keys, sql_llm_prices,
          sql_notifications, sql_portal, sql_receipts)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    e = sa.create_engine(db_url)
    yield e
    e.dispose()


def sample(column: sa.Column[Any], table: str) -> Any:
    """A value of the column's type (distinct per table, so rows are told apart)."""
    t = column.type
    if isinstance(t, sa.Boolean):
        return True
    if isinstance(t, sa.Integer):
        return 7
    if isinstance(t, sa.DateTime):
        return datetime(2026, 3, 1, 12, 30, 15, 123000, tzinfo=UTC)
    text = f'{{"{table}.{column.name}": "0.000000000000000001"}}'
    return text[: t.length] if isinstance(t, sa.String) and t.length else text


def fill_every_table(e: sa.Engine, md: sa.MetaData) -> None:
    with e.begin() as c:
        for table in md.sorted_tables:
            c.execute(table.insert().values({col.name: sample(col, table.name) for col in table.columns}))


def read_every_table(e: sa.Engine, names: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in the baseline's columns (a later revision may add a column: 0004 does)."""
    md = migrations.baseline_metadata()
    def cols(n: str) -> str:
        return ", ".join(f'"{col.name}"' for col in md.tables[n].columns) if n in md.tables else "*"

    with e.connect() as c:
        return {n: sorted(tuple(r) for r in c.execute(sa.text(f'SELECT {cols(n)} FROM "{n}"'))) for n in names}  # noqa: S608


def revision(e: sa.Engine) -> str | None:
    with e.connect() as c:
        return migrations.revision_of(c)


def index_names(e: sa.Engine, table: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(e).get_indexes(table)}


def test_revision_list_is_alembic_chain() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations.HERE))
    chain = [s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()][::-1]
    assert tuple(chain) == migrations.REVISIONS


def test_baseline_with_data_in_every_table_upgrades_to_head_losing_nothing(engine: sa.Engine) -> None:
    assert migrations.upgrade(engine, migrations.BASELINE) == migrations.BASELINE
    baseline = migrations.baseline_metadata()
    fill_every_table(engine, baseline)
    names = sorted(baseline.tables)
    before = read_every_table(engine, names)
    assert all(len(rows) == 1 for rows in before.values()) and len(names) == 26
    assert "customer_subjects_customer" not in index_names(engine, "customer_subjects")

    assert migrations.upgrade(engine) == migrations.HEAD
    assert revision(engine) == migrations.HEAD
    assert read_every_table(engine, names) == before  # every row, every value
    assert "customer_subjects_customer" in index_names(engine, "customer_subjects")
    # and the store reads it through the new index's query
    links = baseline.tables["customer_subjects"].c
    ns, subject, customer = (sample(links[n], "customer_subjects") for n in ("namespace", "subject_key", "customer_id"))
    store = SqlMetaStore(engine.url.render_as_string(hide_password=False))
    try:
        assert store.subjects_of_customers(ns, [customer]) == {subject: customer}
    finally:
        store.close()


def test_database_made_by_create_all_is_adopted(engine: sa.Engine) -> None:
    """What `billow serve` / a Lambda cold start left before versioned migrations: the tables of the stores
    that had been used (here the meta, entitlement and key stores, as bootstrap.build made them), no version."""
    for model in (sql, sql_entitlements, sql_keys):
        model.md.create_all(engine)
    made = migrations.baseline_metadata()
    present = sorted(set(sa.inspect(engine).get_table_names()))
    fill_every_table(engine, _only(made, present))
    before = read_every_table(engine, present)

    store = SqlMetaStore(engine.url.render_as_string(hide_password=False))
    try:
        store.migrate()  # what every store's migrate() now does: the one Alembic upgrade
    finally:
        store.close()

    assert revision(engine) == migrations.HEAD
    assert read_every_table(engine, present) == before
    # tables of revisions after the baseline (0003_apps, 0005_ingest_receipts, 0006_backtest_jobs)
    later = {"apps", "customer_apps", "ingest_receipts", "backtest_jobs"}
    assert set(sa.inspect(engine).get_table_names()) == set(made.tables) | later | {"alembic_version"}
    assert "customer_subjects_customer" in index_names(engine, "customer_subjects")


def _only(md: sa.MetaData, names: list[str]) -> sa.MetaData:
    out = sa.MetaData()
    for n in names:
        md.tables[n].to_metadata(out)
    return out


def test_a_full_create_all_database_is_adopted_too(engine: sa.Engine) -> None:
    migrations.baseline_metadata().create_all(engine)  # every store used: today's full schema, no version
    assert revision(engine) is None
    assert migrations.upgrade(engine) == migrations.HEAD
    assert revision(engine) == migrations.HEAD


def test_a_database_that_is_not_the_baseline_is_refused_not_stamped(engine: sa.Engine) -> None:
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE meters (namespace VARCHAR(64), id VARCHAR(26) PRIMARY KEY)"))
    with pytest.raises(migrations.SchemaNotCurrent, match="meters lacks slug"):
        migrations.upgrade(engine)
    assert revision(engine) is None  # rolled back: nothing stamped, nothing created
    assert sa.inspect(engine).get_table_names() == ["meters"]


def test_head_is_exactly_the_stores_models(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrations.upgrade(engine)
    models = sa.MetaData()
    for model in MODELS:
        for table in model.md.tables.values():
            table.to_metadata(models)
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), models)
    assert diff == []


def test_concurrent_upgrades_on_postgres_queue_on_the_advisory_lock(pg_database: str) -> None:
    """Four processes (four Lambda containers, or `billow migrate` twice) upgrade one empty database at once."""
    code = ("import sys, sqlalchemy as sa; from billow import migrations; "
            "print(migrations.upgrade(sa.create_engine(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_database], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-600:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == [migrations.HEAD] * 4
    e = sa.create_engine(pg_database)
    try:
        with e.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert revision(e) == migrations.HEAD
    finally:
        e.dispose()


def test_upgrade_is_idempotent_and_check_accepts_head(engine: sa.Engine) -> None:
    assert migrations.upgrade(engine) == migrations.HEAD
    other = sa.create_engine(engine.url)  # a new engine: no in-process memo
    try:
        assert migrations.upgrade(other) == migrations.HEAD
        assert migrations.check(other) == migrations.HEAD
    finally:
        other.dispose()


def test_check_refuses_a_database_behind_or_never_migrated(engine: sa.Engine) -> None:
    with pytest.raises(migrations.SchemaNotCurrent, match="no schema revision.*billow migrate"):
        migrations.check(engine)
    migrations.upgrade(engine, migrations.BASELINE)
    with pytest.raises(migrations.SchemaNotCurrent, match=f"at schema revision {migrations.BASELINE}.*needs "
                                                          f"{migrations.HEAD}"):
        migrations.check(engine)


def test_revision_ids_fit_alembic_version_column() -> None:
    assert all(len(r) <= 32 for r in migrations.REVISIONS)


# --- where migrations run: billow serve / embedded yes, a Lambda cold start never -------------------------

@pytest.fixture
def ddl_log() -> Iterator[list[str]]:
    """Every DDL statement any engine in this process sends while the test runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("CREATE", "ALTER", "DROP"):
            seen.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(sa.Engine, "before_cursor_execute", record)


def lambda_settings(db_url: str, tmp_path: Any) -> Any:
    from billow.bootstrap import Settings

    return Settings(meta_store_url=db_url, usage_store="memory", data_dir=str(tmp_path / "none"),
                    namespace="lam" + uuid.uuid4().hex[:8])


def test_lambda_bootstrap_on_a_migrated_database_runs_no_ddl(db_url: str, tmp_path: Any, ddl_log: list[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from billow.adapters.sql_portal import SqlPortalStore
    from billow.bootstrap import build
    from billow.services.meters import create_meter, get_meter

    e = sa.create_engine(db_url)
    migrations.upgrade(e)  # the deploy's migrate function did this
    e.dispose()
    ddl_log.clear()
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "billow-test-api")
    c = build(lambda_settings(db_url, tmp_path))
    try:
        for open_store in (c.catalog_store, c.billing_store, c.notification_store, c.llm_price_store):
            open_store()
        c.store(SqlPortalStore)
        m = create_meter(c.namespace, {"slug": "calls", "eventType": "call", "aggregation": "COUNT"},
                         meta=c.meta, usage=c.usage, now=c.clock.now(), sink_lock=c.sink_lock)
        assert get_meter(c.namespace, "calls", meta=c.meta).id == m.id
    finally:
        c.close()
    assert ddl_log == []


@pytest.mark.parametrize("state", ["empty", "baseline"])
def test_lambda_bootstrap_refuses_a_database_behind_without_ddl(db_url: str, tmp_path: Any, ddl_log: list[str],
                                                                monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    from billow.bootstrap import build

    e = sa.create_engine(db_url)
    if state == "baseline":
        migrations.upgrade(e, migrations.BASELINE)
    ddl_log.clear()
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "billow-test-api")
    with pytest.raises(migrations.SchemaNotCurrent, match="billow migrate"):
        build(lambda_settings(db_url, tmp_path))
    assert ddl_log == []
    assert revision(e) == (None if state == "empty" else migrations.BASELINE)
    e.dispose()


def test_embedded_build_migrates_to_head(db_url: str, tmp_path: Any) -> None:
    from billow.bootstrap import build

    e = sa.create_engine(db_url)
    migrations.upgrade(e, migrations.BASELINE)  # a data dir from the previous release
    c = build(lambda_settings(db_url, tmp_path))  # what billow serve does at start
    c.close()
    assert revision(e) == migrations.HEAD
    e.dispose()


def test_usage_store_reports_its_pending_migrations_without_ddl(chdb_store: Any) -> None:
    assert chdb_store.pending_migrations() == []


def test_billow_migrate_brings_a_previous_release_data_dir_to_head(tmp_path: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    old = sa.create_engine(f"sqlite:///{data / 'billow.db'}")
    migrations.baseline_metadata().create_all(old)  # what billow serve left before versioned migrations
    for _ in range(2):  # and again: nothing to do
        done = subprocess.run([sys.executable, "-m", "billow.cli", "migrate", "--data-dir", str(data)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"meta database at schema revision {migrations.HEAD}" in done.stdout
        assert "usage store: chdb at migration" in done.stdout
    assert revision(old) == migrations.HEAD
    old.dispose()


def test_aws_migrate_function_migrates_the_meta_database_and_waits_for_the_clickhouse_secret(
        db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from functions.migrate.handler import PLACEHOLDER_HOST, lambda_handler
    from infra.constructs.usage_store import PLACEHOLDER_HOST as STACK_PLACEHOLDER

    assert PLACEHOLDER_HOST == STACK_PLACEHOLDER
    for k in [k for k in os.environ if k.startswith("BILLOW_") and not k.startswith("BILLOW_TEST_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "billow-test-migrate")
    monkeypatch.setenv("BILLOW_META_STORE_URL", db_url)
    monkeypatch.setenv("BILLOW_DATA_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("BILLOW_USAGE_STORE", "clickhouse")
    monkeypatch.setenv("BILLOW_CLICKHOUSE_DSN", f"https://default:pw@{PLACEHOLDER_HOST}:8443/billow")
    done = lambda_handler({"RequestType": "Create"}, None)
    assert done["meta"] == migrations.HEAD and done["usage"].startswith("skipped")
    e = sa.create_engine(db_url)
    assert revision(e) == migrations.HEAD
    e.dispose()
    assert not (tmp_path / "none").exists()
