"""Issue 18 item 9, the rest: dev idles under $200 a month. Off prod there is no RDS Proxy (its 8-ACU minimum was
$87.60 of dev's $257.48): the functions log in straight to the Aurora Serverless v2 cluster endpoint as the
application role with IAM tokens (`rds-db:connect` on the cluster's dbuser ARN), over TLS verified against the RDS CA
bundle shipped in the code asset (layers/rds_ca.py); the migrate function logs in as the master user with the
password of the master secret (the master user cannot use IAM), read per run so rotation never breaks it, over
the same verified TLS. Prod keeps the proxy (tests/infra/test_readiness_db.py)."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import require_service
from tests.infra.support import HANDLERS, Synth, as_list, dumps, refs, synthesize
from tests.infra.test_readiness_db import connect_users, env_of


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "dev", "region": "eu-west-1"}, lambda_assets)


def test_dev_has_no_rds_proxy_and_idles_under_200_dollars(dev: Synth) -> None:
    from infra.costs import idle_cost, total

    assert not dev.of_type("AWS::RDS::DBProxy") and not dev.of_type("AWS::RDS::DBProxyTargetGroup")
    assert dev.stack.database.proxy is None
    monthly = total(idle_cost(dev.template.to_json()))
    assert monthly < Decimal(200), monthly


def test_dev_functions_log_in_to_the_cluster_endpoint_with_iam_over_the_shipped_ca_bundle(dev: Synth) -> None:
    from infra.constructs.database import APP_USER, DATABASE, MASTER_USER
    from layers.rds_ca import LAMBDA_PATH

    (cluster_id, cluster), = dev.of_type("AWS::RDS::DBCluster").items()
    assert cluster["Properties"]["EnableIAMDatabaseAuthentication"] is True
    for name in HANDLERS:
        env = env_of(dev, name)
        assert env["BILLOW_DB_HOST"] == {"Fn::GetAtt": [cluster_id, "Endpoint.Address"]}, name
        assert env["BILLOW_DB_USER"] == APP_USER and env["BILLOW_DB_NAME"] == DATABASE, name
        assert env["BILLOW_DB_CA_BUNDLE"] == LAMBDA_PATH, name
        users = connect_users(dev, dev.role_of(name))
        assert users == {APP_USER: {cluster_id}}, (name, users)  # the cluster's dbuser ARN; migrate too (no master)
        assert "DBClusterResourceId" in dumps(dev.statements(dev.role_of(name))), name
    assert env_of(dev, "migrate")["BILLOW_DB_ADMIN_USER"] == MASTER_USER


def test_only_migrate_reads_the_master_secret_in_dev(dev: Synth) -> None:
    (attachment,) = dev.of_type("AWS::SecretsManager::SecretTargetAttachment")
    db_secrets = {attachment, dev.logical_id(dev.stack.database.secret)}
    readers = set()
    for policy in dev.of_type("AWS::IAM::Policy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "secretsmanager:GetSecretValue" in as_list(st["Action"]) and refs(st["Resource"]) & db_secrets:
                readers |= refs(policy["Properties"]["Roles"])
    fn_roles = {dev.role_of(n): n for n in HANDLERS}
    assert {fn_roles[r] for r in readers if r in fn_roles} == {"migrate"}
    assert env_of(dev, "migrate")["BILLOW_DB_ADMIN_SECRET_ARN"] == {"Ref": attachment}
    assert not any("BILLOW_DB_ADMIN_SECRET_ARN" in env_of(dev, n) for n in HANDLERS if n != "migrate")


def test_only_the_functions_and_rotation_reach_the_cluster_and_it_forces_tls(dev: Synth) -> None:
    db_sg = dev.logical_id(dev.stack.database.security_group)
    sources = {next(iter(refs(r["Properties"]["SourceSecurityGroupId"])))
               for r in dev.of_type("AWS::EC2::SecurityGroupIngress").values()
               if db_sg in refs(r["Properties"]["GroupId"])}
    rotation = {k for k, v in dev.of_type("AWS::EC2::SecurityGroup").items() if "Rotation" in k}
    assert dev.logical_id(dev.stack.network.functions_sg) in sources
    assert sources <= {dev.logical_id(dev.stack.network.functions_sg), *rotation}, sources
    (group,) = dev.of_type("AWS::RDS::DBClusterParameterGroup").values()
    assert group["Properties"]["Parameters"]["rds.force_ssl"] == "1"  # no plaintext login, whatever the client


def test_prod_keeps_the_proxy_and_every_stage_ships_the_bundle(tmp_path_factory: pytest.TempPathFactory,
                                                               lambda_assets: Any) -> None:
    from layers.rds_ca import LAMBDA_PATH

    prod = synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "prod", "account": "123456789012"}, lambda_assets)
    (proxy_id,) = prod.of_type("AWS::RDS::DBProxy")
    for name in HANDLERS:
        env = env_of(prod, name)
        assert env["BILLOW_DB_HOST"] == {"Fn::GetAtt": [proxy_id, "Endpoint"]}, name
        assert env["BILLOW_DB_CA_BUNDLE"] == LAMBDA_PATH, name
        assert "BILLOW_DB_ADMIN_SECRET_ARN" not in env, name


def test_a_region_the_bundle_does_not_cover_is_refused_without_the_proxy(lambda_assets: Any) -> None:
    from aws_cdk import App

    from infra.app import build_app

    with pytest.raises(ValueError, match=r"region.*mx-central-1.*RDS CA bundle.*db_proxy=true"):
        build_app(App(context={"stage": "dev", "region": "mx-central-1"}), assets=lambda_assets[:2])
    build_app(App(context={"stage": "dev", "region": "mx-central-1", "db_proxy": "true"}), assets=lambda_assets[:2])


# --- the migrate function's master login without the proxy ------------------------------------------------

@pytest.fixture
def master_db(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A database owned by a master role with a password, that role's RDS-shaped secret on LocalStack, and a
    stand-in for Aurora's `rds_iam`; all dropped afterwards."""
    import boto3

    admin_url = require_service("BILLOW_TEST_PG_URL", "PostgreSQL")
    tag = uuid.uuid4().hex[:10]
    names = {"master": f"master_{tag}", "app": f"app_{tag}", "iam": f"rds_iam_{tag}", "db": f"billow_dev_{tag}"}
    password = f"pw-{uuid.uuid4().hex}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE ROLE \"{names['master']}\" LOGIN CREATEROLE CREATEDB PASSWORD '{password}'")
        c.exec_driver_sql(f'CREATE ROLE "{names["iam"]}" NOLOGIN')
        c.exec_driver_sql(f'GRANT "{names["iam"]}" TO "{names["master"]}" WITH ADMIN OPTION')
        c.exec_driver_sql(f'CREATE DATABASE "{names["db"]}" OWNER "{names["master"]}"')
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    sm = boto3.client("secretsmanager", endpoint_url=aws_endpoint, region_name="eu-west-1")
    arn = sm.create_secret(Name=f"billow/dev/{tag}", SecretString=json.dumps({  # the shape RDS generates
        "engine": "postgres", "host": "billow-dev.cluster-abc.eu-west-1.rds.amazonaws.com", "port": 5432,
        "username": names["master"], "password": password, "dbname": names["db"]}))["ARN"]
    yield {**names, "arn": arn, "password": password, "pg": sa.make_url(admin_url)}
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{names["db"]}" WITH (FORCE)')
        for role in ("app", "iam", "master"):
            c.exec_driver_sql(f'DROP ROLE IF EXISTS "{names[role]}"')
    admin.dispose()


def test_migrate_logs_in_as_master_with_the_secrets_password_over_verified_tls(
        master_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """functions/migrate's role step without the proxy: the master password from the secret (read on this run, not
    cached), TLS verified against the shipped RDS CA bundle and the cluster's host name, then the app role made."""
    import pg8000.dbapi

    from billow.adapters import rds_iam
    from billow.bootstrap import Settings
    from functions.migrate import handler
    from layers.rds_ca import BUNDLE

    host = "billow-dev.cluster-abc.eu-west-1.rds.amazonaws.com"
    monkeypatch.setenv("BILLOW_DB_ADMIN_USER", master_db["master"])
    monkeypatch.setenv("BILLOW_DB_ADMIN_SECRET_ARN", master_db["arn"])
    settings = Settings.parse({"db_host": host, "db_user": master_db["app"], "db_name": master_db["db"],
                               "db_ca_bundle": str(BUNDLE)})
    opened: list[dict[str, Any]] = []
    pg = master_db["pg"]

    def connect(**kw: Any) -> Any:  # what pg8000 is asked for, then the same login to the test server (no TLS there)
        opened.append(kw)
        return pg8000.dbapi.connect(user=kw["user"], password=kw["password"], host=pg.host, port=pg.port,
                                    database=kw["database"])

    make_role = rds_iam.ensure_app_role  # Aurora's rds_iam is a stand-in role here
    monkeypatch.setattr(rds_iam, "ensure_app_role", lambda engine, user: make_role(engine, user,
                                                                                    iam_role=master_db["iam"]))
    monkeypatch.setattr(handler, "pg_connect", connect)
    assert handler.ensure_app_role(settings) == "created"
    assert handler.ensure_app_role(settings) == "exists"
    assert opened and all((o["user"], o["host"], o["port"], o["database"], o["password"]) ==
                          (master_db["master"], host, 5432, master_db["db"], master_db["password"]) for o in opened)
    for o in opened:
        ctx = o["ssl_context"]
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True
        subjects = {dict(x[0] for x in c["subject"])["commonName"] for c in ctx.get_ca_certs()}
        assert "Amazon RDS eu-west-1 Root CA RSA2048 G1" in subjects  # the shipped bundle, not the system store
    with sa.create_engine(pg.set(database=master_db["db"])).connect() as c:
        assert c.exec_driver_sql("SELECT pg_has_role(%s, %s, 'MEMBER')",
                                 (master_db["app"], master_db["iam"])).scalar() is True


def test_the_shipped_bundle_path_exists_where_lambda_runs_the_code(lambda_assets: Any) -> None:
    from layers.rds_ca import ASSET_NAME, BUNDLE, LAMBDA_PATH

    _, code, _ = lambda_assets
    assert LAMBDA_PATH == f"/var/task/{ASSET_NAME}"  # Lambda unpacks the code asset into /var/task
    assert (Path(code) / ASSET_NAME).read_bytes() == BUNDLE.read_bytes()


def test_dev_without_the_proxy_is_cdk_nag_clean(dev: Synth) -> None:
    from aws_cdk.assertions import Annotations, Match

    annotations = Annotations.from_stack(dev.stack)
    found = [*annotations.find_error("*", Match.string_like_regexp(".*AwsSolutions-.*")),
             *annotations.find_warning("*", Match.string_like_regexp(".*(AwsSolutions|CdkNag).*"))]
    assert not found, [f"{e.id}: {str(e.entry.data)[:160]}" for e in found]
