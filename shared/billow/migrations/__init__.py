"""Versioned schema migrations: the meta store's (SQLite and PostgreSQL) through Alembic, and the usage store's
own (billow.adapters.clickhouse_schema.MIGRATIONS).

* One Alembic environment for every SQL store (env.py + versions/ beside this file, shipped in the wheel and the
  Lambda code asset); the Config is built in code, no alembic.ini. `rev_0001_baseline` creates the schema the
  stores' `create_all` made before versions existed; every later change is a new revision.
* `upgrade(engine)` is the one way the meta schema changes: `billow migrate`, `billow serve` at start, the
  stores' `migrate()` (tests, embedded) and, in AWS, the `migrate` function that a CDK trigger invokes once per
  deploy. A database that `create_all` made (tables, no alembic_version) is adopted: checked against the
  baseline, missing baseline tables created, stamped at the baseline, then upgraded.
* Concurrent upgrades are safe: on PostgreSQL they queue on a transaction-scoped advisory lock, on SQLite on
  BEGIN IMMEDIATE, and each upgrade (adoption included) commits or rolls back as one transaction.
* A Lambda cold start never runs DDL: `check(engine)` reads alembic_version (one SELECT) and refuses a database
  that is behind this code, naming what to run. A database ahead of this code (a newer deploy migrated it while
  this container still runs the old code) is accepted: revisions add, they do not break the previous release.

This module imports no Alembic until an upgrade has work to do (the cold-start check is plain SQLAlchemy)."""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from billow.bootstrap import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
# Every revision, oldest first (tests/adapters/test_migrations.py checks this against Alembic's own chain).
# Revision ids: at most 32 characters (alembic_version.version_num is VARCHAR(32)).
REVISIONS = ("0001_baseline", "0002_customer_subjects_idx", "0003_apps", "0004_meter_ingestion_policy",
             "0005_ingest_receipts", "0006_backtest_jobs")
BASELINE, HEAD = REVISIONS[0], REVISIONS[-1]
VERSION_TABLE = "alembic_version"
LOCK_KEY = 0x62696C6C6F77  # pg_advisory_xact_lock key: "billow"
MIGRATE_HINT = ("run `billow migrate` (in AWS the deploy runs it: invoke the billow-<stage>-migrate "
                "function to run it again)")

_current: weakref.WeakSet[sa.Engine] = weakref.WeakSet()  # engines this process saw at HEAD
_alembic_lock = threading.Lock()  # Alembic's `context` and `op` are module globals: one run per process at a time


class SchemaNotCurrent(RuntimeError):
    """The database's schema is not what this code needs (missing, behind, or not adoptable)."""


def revision_of(conn: sa.Connection) -> str | None:
    """The database's schema revision; None where no migration ever ran (no version table)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()  # noqa: S608 (constant)


def check(engine: sa.Engine) -> str:
    """What a Lambda cold start does instead of migrating: read the revision, fail clearly if it is behind."""
    with engine.connect() as conn:
        rev = revision_of(conn)
    if rev is None:
        raise SchemaNotCurrent(f"the meta database has no schema revision (needs {HEAD}): {MIGRATE_HINT}")
    if rev in REVISIONS[:-1]:
        raise SchemaNotCurrent(f"the meta database is at schema revision {rev}, this code needs {HEAD}: "
                               f"{MIGRATE_HINT}")
    if rev != HEAD:
        log.warning("meta database is at schema revision %s, newer than this code's %s", rev, HEAD)
    _current.add(engine)
    return rev


def upgrade(engine: sa.Engine, target: str = "head") -> str:
    """Bring the database to `target` (adopting a `create_all` database first); returns the revision."""
    if target == "head" and engine in _current:
        return HEAD
    if target == "head":
        with engine.connect() as conn:
            if revision_of(conn) == HEAD:
                _current.add(engine)
                return HEAD
    from alembic import command

    with _alembic_lock, _migration_transaction(engine) as conn:
        config = _config(conn)
        _adopt(conn, config)
        command.upgrade(config, target)
        rev = revision_of(conn)
    if rev == HEAD:
        _current.add(engine)
    log.info("meta database at schema revision %s", rev)
    return rev or ""


def _config(conn: sa.Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = conn
    return config


@contextlib.contextmanager
def _migration_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One transaction that holds the migration lock until it commits."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            yield conn
        return
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # pysqlite neither begins a transaction before DDL nor takes the write lock up front: a connection of
        # our own, in autocommit mode at the driver, that SQLAlchemy starts with BEGIN IMMEDIATE.
        mig = sa.create_engine(url, poolclass=sa.pool.NullPool,
                               connect_args={"timeout": 60, "check_same_thread": False})

        @sa.event.listens_for(mig, "connect")
        def _autocommit(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None

        @sa.event.listens_for(mig, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        try:
            with mig.begin() as conn:
                yield conn
        finally:
            mig.dispose()
        return
    with engine.begin() as conn:  # an in-memory SQLite database: one process, nothing to race
        yield conn


def _adopt(conn: sa.Connection, config: Any) -> None:
    """A database made by `create_all` before versioned migrations: check it is the baseline, create the
    baseline tables it lacks (the stores made theirs on first use), and stamp it at the baseline."""
    from alembic import command

    if revision_of(conn) is not None:
        return
    baseline = baseline_metadata()
    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names()) & set(baseline.tables)
    if not present:
        return  # an empty database: the baseline revision creates everything
    problems = []
    for name in sorted(present):
        have = {c["name"] for c in inspector.get_columns(name)}
        if missing := [c.name for c in baseline.tables[name].columns if c.name not in have]:
            problems.append(f"{name} lacks {', '.join(missing)}")
    if problems:
        raise SchemaNotCurrent("cannot adopt this database as schema revision " + BASELINE + ": "
                               + "; ".join(problems))
    for name in sorted(present):
        have_indexes = {i["name"] for i in inspector.get_indexes(name)}
        for index in baseline.tables[name].indexes:
            if index.name not in have_indexes:
                index.create(conn)
    baseline.create_all(conn, tables=[t for n, t in baseline.tables.items() if n not in present])
    command.stamp(config, BASELINE)
    log.warning("adopted a meta database made before versioned migrations (%d of %d baseline tables were there); "
                "stamped %s", len(present), len(baseline.tables), BASELINE)


def baseline_metadata() -> sa.MetaData:
    """The baseline revision's tables (loaded from its file: versions/ is Alembic's, not a package)."""
    import importlib.util

    path = HERE / "versions" / "rev_0001_baseline.py"
    spec = importlib.util.spec_from_file_location("billow_migrations_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    md: sa.MetaData = module.metadata()
    return md


def meta_url(settings: Settings) -> str:
    if not settings.meta_store_url and settings.db_user:  # AWS: IAM auth through RDS Proxy (adapters/rds_iam.py)
        from billow.adapters.rds_iam import iam_url

        return iam_url(settings.db_user, settings.db_host, settings.db_name)
    return settings.meta_store_url or f"sqlite:///{(Path(settings.data_dir) / 'billow.db').resolve()}"


def meta_engine_options(settings: Settings, user: str | None = None) -> dict[str, Any]:
    """The meta store engine's options: with IAM auth, a `creator` that logs in with a fresh token per connection
    over verified TLS (as `user`, by default the application role db_user)."""
    if settings.meta_store_url or not settings.db_user:
        return {}
    from billow.adapters.rds_iam import IamConnector, iam_url

    iam_url(settings.db_user, settings.db_host, settings.db_name)  # the same checks as meta_url
    assert settings.db_host and settings.db_name
    return {"creator": IamConnector(host=settings.db_host, user=user or settings.db_user, database=settings.db_name,
                                    ca_bundle=settings.db_ca_bundle)}


def migrate_all(settings: Settings, *, fill_until: Callable[[], bool] | None = None) -> dict[str, str]:
    """`billow migrate` and the AWS migrate function: the meta database to HEAD, then the usage store's own
    migrations (ClickHouse or embedded chdb), then the LATEST fill of every live LATEST meter whose cells were
    stored before usage-store migration 5 (`ClickHouseUsageStore.fill_latest`, once per meter), while `fill_until()`
    is true (None: all of them). Returns what each store is at now."""
    from billow.adapters.sql import SqlMetaStore

    if not settings.meta_store_url:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    meta = SqlMetaStore(meta_url(settings), **meta_engine_options(settings))
    try:
        done = {"meta": upgrade(meta.engine)}
        latest = meta.live_meters_of("LATEST")
    finally:
        meta.close()
    if settings.usage_store == "memory":
        done["usage"] = "memory (no schema)"
        return done
    from billow.adapters.clickhouse import ClickHouseUsageStore, connect
    from billow.adapters.clickhouse_schema import MIGRATIONS

    dsn = (settings.clickhouse_dsn if settings.usage_store == "clickhouse"
           else f"chdb://{(Path(settings.data_dir) / 'usage').resolve()}")
    if not dsn:
        raise ValueError("usage_store=clickhouse needs clickhouse_dsn (or clickhouse_secret_arn)")
    usage = ClickHouseUsageStore(connect(dsn))
    try:
        usage.migrate()
        if pending := usage.pending_migrations():
            raise SchemaNotCurrent(f"usage store migrations {pending} did not apply")
        done["usage"] = f"{settings.usage_store} at migration {MIGRATIONS[-1][0]}"
        # In AWS no request should fill a meter: a big one takes minutes, past API Gateway's 29 s, and a fill cut
        # short records nothing, so every LATEST query of that meter would start it again.
        filled = 0
        for namespace, meter_id in latest:
            if fill_until is not None and not fill_until():
                break
            usage.fill_latest(namespace, meter_id)
            filled += 1
        if latest:
            done["latestFill"] = (f"{filled} of {len(latest)} LATEST meters checked or filled" +
                                  ("" if filled == len(latest) else
                                   "; out of time: run it again (a meter's first LATEST query fills it otherwise)"))
    finally:
        usage.close()
    return done
