"""Issue 18, asserted on the synthesized prod template (items 3, 4 and 6): database auth that survives rotation (IAM
through RDS Proxy, no function reads the DB password, the database pinned), the Kafka topic made at deploy with
explicit partitions and retention, and the first admin key in a Secrets Manager secret the stack makes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.support import HANDLERS, Synth, as_list, dumps, refs, synthesize

ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "prod", "namespace": "acme", "account": ACCOUNT},
                      lambda_assets)


def env_of(s: Synth, name: str) -> dict[str, Any]:
    return dict(s.function(name)[1]["Properties"]["Environment"]["Variables"])


def connect_users(s: Synth, role_id: str) -> dict[str, set[str]]:
    """db user -> the logical ids the rds-db:connect resource ARNs (dbuser:<id>/<user>) are built from."""
    found: dict[str, set[str]] = {}
    for st in s.statements(role_id):
        if "rds-db:connect" in as_list(st["Action"]):
            assert st["Effect"] == "Allow"
            for arn in as_list(st["Resource"]):
                text = dumps(arn)
                assert ":dbuser:" in text and "*" not in text, text
                user = text.rsplit("/", 1)[1].split('"')[0]
                found.setdefault(user, set()).update(r for r in refs(arn) if not r.startswith("AWS::"))
    return found


# --- 3. database auth that survives rotation -------------------------------------------------------------

def test_rds_proxy_requires_iam_auth_and_logs_in_to_aurora_with_iam(prod: Synth) -> None:
    from infra.constructs.database import APP_USER

    (proxy_id, proxy), = prod.of_type("AWS::RDS::DBProxy").items()
    p = proxy["Properties"]
    assert p["RequireTLS"] is True
    assert p["Auth"] and all(a["IAMAuth"] == "REQUIRED" for a in p["Auth"])  # no password login to the proxy
    assert p["DefaultAuthScheme"] == "IAM_AUTH"  # the application role: IAM from client to proxy to Aurora
    (cluster_id, cluster), = prod.of_type("AWS::RDS::DBCluster").items()
    assert cluster["Properties"]["EnableIAMDatabaseAuthentication"] is True
    # the proxy's own role may log in to Aurora as the application role (end-to-end IAM)
    (proxy_role,) = refs(p["RoleArn"])
    assert connect_users(prod, proxy_role) == {APP_USER: {cluster_id}}
    assert "DBClusterResourceId" in dumps(prod.statements(proxy_role))  # the cluster's dbuser ARN


def test_every_function_logs_in_as_the_app_role_with_iam_and_none_reads_the_db_password(prod: Synth) -> None:
    from infra.constructs.database import APP_USER, DATABASE, MASTER_USER

    proxy_id = prod.logical_id(prod.stack.database.proxy)
    (cluster,) = prod.of_type("AWS::RDS::DBCluster").values()
    assert cluster["Properties"]["DatabaseName"] == DATABASE
    db_secrets = {prod.logical_id(prod.stack.database.secret), *prod.of_type("AWS::SecretsManager::SecretTargetAttachment")}
    for name in HANDLERS:
        env = env_of(prod, name)
        assert env["BILLOW_DB_USER"] == APP_USER and env["BILLOW_DB_NAME"] == DATABASE, name  # pinned, not "postgres"
        assert env["BILLOW_DB_HOST"] == {"Fn::GetAtt": [proxy_id, "Endpoint"]}, name
        assert "BILLOW_DB_SECRET_ARN" not in env, name
        role = prod.role_of(name)
        users = connect_users(prod, role)
        want = {APP_USER, MASTER_USER} if name == "migrate" else {APP_USER}
        assert set(users) == want, name
        assert all(proxy_id in ids for ids in users.values()), name  # the proxy's dbuser ARN, not the cluster's
        for st in prod.statements(role):
            if any(a.startswith("secretsmanager:Get") for a in as_list(st["Action"])):
                assert not refs(st["Resource"]) & db_secrets, name  # rotation cannot break a warm container
    # only the migrate function logs in as the master user (it makes the application role, once)
    assert env_of(prod, "migrate")["BILLOW_DB_ADMIN_USER"] == MASTER_USER
    assert not any("BILLOW_DB_ADMIN_USER" in env_of(prod, n) for n in HANDLERS if n != "migrate")


def test_the_settings_the_stack_sets_are_the_ones_billow_reads(prod: Synth) -> None:
    """What from_env makes of the deployed environment: IAM auth to the pinned database, no secret read."""
    from dataclasses import fields

    from billow.bootstrap import Settings

    known = {"BILLOW_" + f.name.upper() for f in fields(Settings)}
    for name in HANDLERS:
        extra = {k for k in env_of(prod, name) if k.startswith("BILLOW_")} - known
        assert extra <= {"BILLOW_DB_ADMIN_USER", "BILLOW_NOTIFY_QUEUE_URL", "BILLOW_NOTIFY_EMAIL_FROM",
                         "BILLOW_ADMIN_KEY_SECRET_ARN"}, (name, extra)


# --- 4. the Kafka topic made at deploy -------------------------------------------------------------------

def test_the_migrate_function_makes_the_topic_with_explicit_partitions_and_retention(prod: Synth) -> None:
    from billow.bootstrap import Settings
    from billow.bus import PARTITIONS
    from infra.constructs.streaming import topic_for

    env = env_of(prod, "migrate")
    assert env["BILLOW_KAFKA_PARTITIONS"] == str(PARTITIONS)
    assert env["BILLOW_KAFKA_RETENTION_MS"] == str(Settings().kafka_retention_ms) == str(7 * 24 * 3600 * 1000)
    assert env["BILLOW_KAFKA_AUTH"] == "iam" and env["BILLOW_KAFKA_BOOTSTRAP"] == env_of(prod, "ingest")[
        "BILLOW_KAFKA_BOOTSTRAP"]
    assert "BILLOW_BUS" not in env  # it publishes nothing
    statements = prod.statements(prod.role_of("migrate"))
    topic_arn = dumps(prod.stack.resolve(prod.stack.streaming.topic_arn(topic_for("acme"))))
    on_topic = {a for st in statements if dumps(st["Resource"]) == topic_arn for a in as_list(st["Action"])}
    assert on_topic == {"kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic", "kafka-cluster:AlterTopic",
                        "kafka-cluster:DescribeTopicDynamicConfiguration",
                        "kafka-cluster:AlterTopicDynamicConfiguration"}
    cluster_arn = dumps(prod.stack.resolve(prod.stack.streaming.cluster_arn))
    on_cluster = {a for st in statements if dumps(st["Resource"]) == cluster_arn for a in as_list(st["Action"])}
    assert on_cluster == {"kafka-cluster:Connect", "kafka-cluster:DescribeCluster"}
    # no wildcard Kafka grant
    assert not [st for st in statements if any(a.startswith("kafka") for a in as_list(st["Action"]))
                and "*" in as_list(st["Resource"])]


# --- 6. the first admin key without a host in the VPC ----------------------------------------------------

def test_the_first_admin_key_goes_to_a_retained_secret_only_migrate_writes(prod: Synth) -> None:
    import json

    secret = prod.stack.migrations.admin_key
    secret_id = prod.logical_id(secret)
    res = prod.resources[secret_id]
    assert res["DeletionPolicy"] == res["UpdateReplacePolicy"] == "Retain"  # prod: the key outlives the stack
    gen = res["Properties"]["GenerateSecretString"]
    assert json.loads(gen["SecretStringTemplate"]) == {"token": "", "keyId": "", "namespace": ""}
    assert env_of(prod, "migrate")["BILLOW_ADMIN_KEY_SECRET_ARN"] == {"Ref": secret_id}
    writes = [st for st in prod.statements(prod.role_of("migrate")) if refs(st["Resource"]) == {secret_id}]
    assert {a for st in writes for a in as_list(st["Action"])} >= {"secretsmanager:GetSecretValue",
                                                                   "secretsmanager:PutSecretValue"}
    for name in HANDLERS:  # nobody else reads or writes it, nor gets its ARN
        if name != "migrate":
            assert "BILLOW_ADMIN_KEY_SECRET_ARN" not in env_of(prod, name)
            assert not [st for st in prod.statements(prod.role_of(name)) if secret_id in refs(st["Resource"])], name
    outputs = prod.template.to_json()["Outputs"]
    assert outputs["AdminKeySecretArn"]["Value"] == {"Ref": secret_id}
