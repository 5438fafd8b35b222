"""Database auth that survives rotation (issue 18 item 3): in AWS every connection logs in to RDS Proxy as the
application role with a fresh IAM token (no password read once per cold start), over TLS verified against a CA
bundle, to the database named by BILLOW_DB_NAME; the migrate function makes that role once, idempotently, logged in
as the master user. The token creator is tested with a stub RDS client (it is about our wiring: boto3 signs the
token locally); the role step on a real PostgreSQL with a stand-in for Aurora's `rds_iam` role."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from billow.bootstrap import Settings
from tests.conftest import require_service


class StubRds:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def generate_db_auth_token(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        return f"token-{len(self.calls)}"


IAM_SETTINGS = {"db_host": "billow-prod-db.proxy-abc.eu-west-1.rds.amazonaws.com", "db_user": "billow_app",
                "db_name": "billow"}


def test_each_connection_logs_in_with_a_fresh_iam_token_over_verified_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    from billow import migrations
    from billow.adapters import rds_iam

    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    settings = Settings.parse(IAM_SETTINGS)
    assert migrations.meta_url(settings) == (
        "postgresql+pg8000://billow_app@billow-prod-db.proxy-abc.eu-west-1.rds.amazonaws.com:5432/billow")
    options = migrations.meta_engine_options(settings)
    connector = options["creator"]
    assert isinstance(connector, rds_iam.IamConnector)
    rds = StubRds()
    opened: list[dict[str, Any]] = []
    pg = sa.make_url(require_service("BILLOW_TEST_PG_URL", "PostgreSQL"))

    def connect(**kw: Any) -> Any:  # what pg8000 is asked for, then a plain login to the test server (no TLS there)
        import pg8000.dbapi

        opened.append(kw)
        return pg8000.dbapi.connect(user=pg.username, host=pg.host, port=pg.port, database=pg.database,
                                    password=pg.password)

    connector.rds, connector.connect = rds, connect
    engine = sa.create_engine(migrations.meta_url(settings), creator=connector, pool_size=2)
    with engine.connect() as a, engine.connect() as b:  # two connections at once: two logins
        assert a.exec_driver_sql("SELECT 1").scalar() == b.exec_driver_sql("SELECT 1").scalar() == 1
    with engine.connect() as c:  # a pooled connection: no new login, no token
        c.exec_driver_sql("SELECT 1")
    assert [o["password"] for o in opened] == ["token-1", "token-2"]  # never a password read at cold start
    host = IAM_SETTINGS["db_host"]
    assert rds.calls == [{"DBHostname": host, "Port": 5432, "DBUsername": "billow_app", "Region": "eu-west-1"}] * 2
    for o in opened:
        assert (o["user"], o["host"], o["port"], o["database"]) == ("billow_app", host, 5432, "billow")
        ctx = o["ssl_context"]
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True  # TLS verified, not just on
        assert ctx.cert_store_stats()["x509_ca"] > 0
    engine.dispose()


def test_without_iam_the_meta_store_options_are_unchanged() -> None:
    from billow import migrations

    assert migrations.meta_engine_options(Settings.parse({"data_dir": "/tmp/x"})) == {}
    url = "postgresql+pg8000://u:p@h:5432/d"
    assert migrations.meta_engine_options(Settings.parse({"meta_store_url": url, "db_user": "x"})) == {}
    assert migrations.meta_url(Settings.parse({"meta_store_url": url, "db_user": "x"})) == url


def test_the_ca_bundle_is_a_setting_and_a_missing_one_is_a_clear_error(tmp_path: Path) -> None:
    import certifi

    from billow.adapters.rds_iam import tls_context

    ctx = tls_context(certifi.where())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname and ctx.cert_store_stats()["x509_ca"] > 0
    with pytest.raises(ValueError, match=r"db_ca_bundle: .*nope\.pem does not exist"):
        tls_context(str(tmp_path / "nope.pem"))
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(ValueError, match=r"db_ca_bundle: .*holds no CA certificate"):
        tls_context(str(tmp_path / "empty.pem"))


def test_iam_auth_needs_the_proxy_host_and_a_pinned_database_name() -> None:
    from billow import migrations

    with pytest.raises(ValueError, match=r"db_name: .*BILLOW_DB_NAME"):
        migrations.meta_url(Settings.parse({"db_host": "h", "db_user": "billow_app"}))
    with pytest.raises(ValueError, match=r"db_host: .*BILLOW_DB_HOST"):
        migrations.meta_url(Settings.parse({"db_name": "billow", "db_user": "billow_app"}))


def test_the_secret_path_uses_the_pinned_database_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import billow.adapters.aws as aws

    monkeypatch.setattr(aws, "secret_json", lambda arn: {"username": "billow", "password": "pw", "host": "db", "port": 5432})
    assert Settings.parse({"db_secret_arn": "arn:x"}).with_secrets().meta_store_url == (
        "postgresql+pg8000://billow:pw@db:5432/postgres")  # the RDS secret names no database
    pinned = Settings.parse({"db_secret_arn": "arn:x", "db_name": "billow"}).with_secrets()
    assert pinned.meta_store_url == "postgresql+pg8000://billow:pw@db:5432/billow"


# --- the application role, made once by the migrate function ---------------------------------------------

@pytest.fixture
def aurora_like() -> Iterator[dict[str, str]]:
    """A database owned by a master role with Aurora's master privileges (CREATEROLE, CREATEDB, no superuser) and
    a stand-in for `rds_iam`; all dropped afterwards."""
    admin_url = require_service("BILLOW_TEST_PG_URL", "PostgreSQL")
    tag = uuid.uuid4().hex[:10]
    names = {"master": f"master_{tag}", "app": f"app_{tag}", "iam": f"rds_iam_{tag}", "db": f"billow_iam_{tag}"}
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE ROLE "{names["master"]}" LOGIN CREATEROLE CREATEDB')
        c.exec_driver_sql(f'CREATE ROLE "{names["iam"]}" NOLOGIN')
        c.exec_driver_sql(f'GRANT "{names["iam"]}" TO "{names["master"]}" WITH ADMIN OPTION')  # as rds_superuser has
        c.exec_driver_sql(f'CREATE DATABASE "{names["db"]}" OWNER "{names["master"]}"')
    url = sa.make_url(admin_url)
    yield {**names, "master_url": url.set(username=names["master"], database=names["db"]).render_as_string(False),
           "app_url": url.set(username=names["app"], database=names["db"]).render_as_string(False)}
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{names["db"]}" WITH (FORCE)')
        for role in ("app", "iam", "master"):
            c.exec_driver_sql(f'DROP ROLE IF EXISTS "{names[role]}"')
    admin.dispose()


def test_the_migrate_step_makes_the_iam_application_role_once(aurora_like: dict[str, str]) -> None:
    from billow.adapters.rds_iam import ensure_app_role

    master = sa.create_engine(aurora_like["master_url"])
    try:
        assert ensure_app_role(master, aurora_like["app"], iam_role=aurora_like["iam"]) == "created"
        assert ensure_app_role(master, aurora_like["app"], iam_role=aurora_like["iam"]) == "exists"  # re-run: no-op
        with master.connect() as c:
            row = c.exec_driver_sql("SELECT rolcanlogin, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s",
                                    (aurora_like["app"],)).one()
            assert tuple(row) == (True, False, False)  # logs in, nothing more
            assert c.exec_driver_sql("SELECT pg_has_role(%s, %s, 'MEMBER')",
                                     (aurora_like["app"], aurora_like["iam"])).scalar() is True  # IAM logins only
    finally:
        master.dispose()
    # The role owns what the migrations create: it can create tables in the pinned database's public schema.
    app = sa.create_engine(aurora_like["app_url"])
    try:
        with app.begin() as c:
            c.exec_driver_sql("CREATE TABLE t_owned (id int)")
            assert c.exec_driver_sql("SELECT tableowner FROM pg_tables WHERE tablename = 't_owned'").scalar() == \
                aurora_like["app"]
    finally:
        app.dispose()


def test_role_and_database_names_are_checked_before_any_sql() -> None:
    from billow.adapters.rds_iam import ensure_app_role

    engine = sa.create_engine("sqlite://")
    for bad in ('x"; DROP ROLE y; --', "Billow", ""):
        with pytest.raises(ValueError, match="db_user"):
            ensure_app_role(engine, bad)
