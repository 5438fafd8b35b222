"""What `cdk deploy -c stage=test -c namespace=acme -c db_proxy=true` would create, asserted on the synthesized
CloudFormation: every function's handler/runtime/env/grants, the API routes, the MSK trigger, Aurora + proxy, the
schedules, the alarms, cdk-nag, and a plain `app.synth()` to a cloud assembly. (Off prod the proxy is off by default
since issue 18 item 9; `db_proxy=true` keeps this template the proxied shape, and tests/infra/test_dev_db_direct.py
asserts the direct one.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match

from layers.build import BILLING_FUNCTIONS
from tests.infra.support import HANDLERS, JOB_HANDLERS, Synth, as_list, dumps, refs, synthesize

NAMESPACE = "acme"
TOPIC = "billow.acme.events"
# IAM auth through RDS Proxy as the app role, database pinned (issue 18 item 3): no function gets the DB secret;
# TLS verified against the RDS CA bundle shipped in the code asset (BILLOW_DB_CA_BUNDLE, issue 18 items 3 and 9)
COMMON_ENV = {"BILLOW_NAMESPACE", "BILLOW_USAGE_STORE", "BILLOW_DB_USER", "BILLOW_DB_NAME",
              "BILLOW_DB_HOST", "BILLOW_DB_CA_BUNDLE", "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE",
              "POWERTOOLS_LOG_LEVEL", "BILLOW_AUTH"}
KAFKA_ENV = {"BILLOW_BUS", "BILLOW_KAFKA_BOOTSTRAP", "BILLOW_KAFKA_AUTH"}
# the migrate function also makes the app role as the master user (issue 18 item 3)
MIGRATE_ENV = {"BILLOW_DB_ADMIN_USER", "BILLOW_KAFKA_BOOTSTRAP", "BILLOW_KAFKA_AUTH", "BILLOW_KAFKA_PARTITIONS",
               "BILLOW_KAFKA_RETENTION_MS",  # and the namespace topic (item 4)
               "BILLOW_ADMIN_KEY_SECRET_ARN"}  # and the first admin key (item 6)
CLICKHOUSE_ENV = {"BILLOW_CLICKHOUSE_SECRET_ARN"}
USAGE_READERS = {"api", "usage_sink"}  # the others never open the usage store (it opens on first use)
USAGE_READERS.add("migrate")  # runs the ClickHouse migrations too (functions/migrate)
USAGE_READERS |= set(JOB_HANDLERS)  # jobs read usage (thresholds, billing) and get both secrets
NOTIFY_ENV = {"BILLOW_NOTIFY_QUEUE_URL"}  # who may wake notify_dispatch (constructs/notifications.py)
DOCUMENTS_ENV = {"BILLOW_DOCUMENTS_BUCKET"}
JOB_ENV = {"BILLOW_JOB_RUNNER", "BILLOW_JOB_QUEUE_URL"}  # the API hands backtests to billing_run's queue (issue 20)
STRIPE_ENV = {"BILLOW_STRIPE_SECRET_ARN"}
# The functions that create and advance invoices: documents bucket, Stripe secret and notifications
# (constructs/billing.py); the Stripe webhook reads the Stripe secret too, and nothing else does.
INVOICE_FUNCTIONS = {"api"} | ({"billing_run"} & set(JOB_HANDLERS))
STRIPE_READERS = INVOICE_FUNCTIONS | {"stripe_webhook"}
PUBLIC_ROUTES = {"GET /api/v1/openapi.json", "GET /healthz", "GET /readyz", "POST /api/v1/apps/stripe/webhook",
                 "POST /api/v1/apps/{appId}/stripe/webhook",
                 "GET /portal", "GET /portal/{proxy+}", "GET /", "GET /api/docs", "GET /api/docs/{proxy+}",
                 "GET /console", "GET /console/{proxy+}"}


@pytest.fixture(scope="module")
def s(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "test", "namespace": NAMESPACE, "db_proxy": "true"},
                      lambda_assets)


def env_of(s: Synth, name: str) -> dict[str, Any]:
    return dict(s.function(name)[1]["Properties"]["Environment"]["Variables"])


# --- functions -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_each_handler_is_a_python312_arm64_function_on_the_layer_in_the_vpc(s: Synth, name: str) -> None:
    _, fn = s.function(name)
    p = fn["Properties"]
    assert p["Runtime"] == "python3.12" and p["Architectures"] == ["arm64"]
    # issue 18 item 8: the core layer on every function, the billing layer only where stripe/fpdf2 are imported
    # (tests/infra/test_layers.py checks which is which)
    core_id, billing_id = s.logical_id(s.stack.fns.deps), s.logical_id(s.stack.fns.billing_deps)
    assert set(s.of_type("AWS::Lambda::LayerVersion")) == {core_id, billing_id}
    assert p["Layers"] == [{"Ref": core_id}] + ([{"Ref": billing_id}] if name in BILLING_FUNCTIONS else [])
    for layer_id in (core_id, billing_id):
        layer = s.resources[layer_id]["Properties"]
        assert layer["CompatibleRuntimes"] == ["python3.12"] and layer["CompatibleArchitectures"] == ["arm64"]
    assert p["FunctionName"] == f"billow-test-{name.replace('_', '-')}"
    assert p["TracingConfig"] == {"Mode": "Active"}
    assert refs(p["VpcConfig"]["SecurityGroupIds"]) == {s.logical_id(s.stack.network.functions_sg)}
    app_subnets = {s.stack.resolve(sn.node.default_child.logical_id) for sn in s.stack.network.vpc.private_subnets}
    assert refs(p["VpcConfig"]["SubnetIds"]) == app_subnets
    env = env_of(s, name)
    assert env["POWERTOOLS_SERVICE_NAME"] == name
    assert env["BILLOW_NAMESPACE"] == NAMESPACE and env["BILLOW_USAGE_STORE"] == "clickhouse"


def test_functions_read_exactly_the_settings_they_use(s: Synth) -> None:
    # no bus: the API never publishes
    assert set(env_of(s, "api")) == COMMON_ENV | CLICKHOUSE_ENV | NOTIFY_ENV | DOCUMENTS_ENV | STRIPE_ENV | JOB_ENV
    assert set(env_of(s, "ingest")) == COMMON_ENV | KAFKA_ENV  # no ClickHouse: ingest only publishes
    assert set(env_of(s, "usage_sink")) == COMMON_ENV | CLICKHOUSE_ENV | {"BILLOW_DLQ_URL"}  # MSK-fed, no bus
    assert set(env_of(s, "authorizer")) == COMMON_ENV
    assert set(env_of(s, "stripe_webhook")) == COMMON_ENV | STRIPE_ENV  # records payments: meta store only
    if "billing_run" in JOB_HANDLERS:
        notify = NOTIFY_ENV if "notify_dispatch" in JOB_HANDLERS else set()
        assert set(env_of(s, "billing_run")) == COMMON_ENV | CLICKHOUSE_ENV | notify | DOCUMENTS_ENV | STRIPE_ENV
    assert env_of(s, "api")["BILLOW_AUTH"] == "keys"
    ingest = env_of(s, "ingest")
    assert ingest["BILLOW_BUS"] == "kafka" and ingest["BILLOW_KAFKA_AUTH"] == "iam"
    (brokers_id,) = [k for k, v in s.of_type("Custom::AWS").items() if "getBootstrapBrokers" in dumps(v)]
    assert ingest["BILLOW_KAFKA_BOOTSTRAP"] == {"Fn::GetAtt": [brokers_id, "BootstrapBrokerStringSaslIam"]}
    assert env_of(s, "usage_sink")["BILLOW_DLQ_URL"] == {"Ref": s.logical_id(s.stack.dead_letters)}


def test_secrets_reach_functions_only_as_arns_and_the_proxy_endpoint(s: Synth) -> None:
    clickhouse = s.logical_id(s.stack.usage_store.secret)
    stripe = s.logical_id(s.stack.billing.stripe_secret)
    (attachment,) = s.of_type("AWS::SecretsManager::SecretTargetAttachment")
    (proxy,) = s.of_type("AWS::RDS::DBProxy")
    for name in HANDLERS:
        env = env_of(s, name)
        assert env.get("BILLOW_CLICKHOUSE_SECRET_ARN") == ({"Ref": clickhouse} if name in USAGE_READERS else None)
        assert env.get("BILLOW_STRIPE_SECRET_ARN") == ({"Ref": stripe} if name in STRIPE_READERS else None)
        assert "BILLOW_DB_SECRET_ARN" not in env and attachment  # IAM auth: no password (issue 18 item 3)
        assert env["BILLOW_DB_HOST"] == {"Fn::GetAtt": [proxy, "Endpoint"]}
        for key, value in env.items():  # nothing secret-shaped in plain text
            assert not re.search(r"PASSWORD|DSN|TOKEN|KEY$", key), key
            if isinstance(value, str) and key != "BILLOW_NOTIFY_EMAIL_FROM":  # an address, not a credential
                assert "://" not in value and "@" not in value, (key, value)
    # No literal secret value anywhere in the template: every secret is generated by Secrets Manager (the Stripe
    # placeholder too: empty apiKey/webhookSecret, and a generated "password" key that nothing reads).
    for secret in s.of_type("AWS::SecretsManager::Secret").values():
        assert "SecretString" not in secret["Properties"]
        gen = secret["Properties"]["GenerateSecretString"]
        assert gen["GenerateStringKey"] == "password" and "password" not in json.loads(gen["SecretStringTemplate"])
    clickhouse_template = json.loads(s.resources[clickhouse]["Properties"]["GenerateSecretString"]["SecretStringTemplate"])
    assert set(clickhouse_template) == {"host", "port", "username", "database"}  # what bootstrap reads
    stripe_template = json.loads(s.resources[stripe]["Properties"]["GenerateSecretString"]["SecretStringTemplate"])
    assert stripe_template == {"apiKey": "", "webhookSecret": ""}  # what bootstrap reads; the operator fills it


def secret_readers(s: Synth, secrets: set[str]) -> dict[str, set[str]]:
    """Role logical id -> which of `secrets` it may read (GetSecretValue)."""
    readers: dict[str, set[str]] = {}
    for policy in s.of_type("AWS::IAM::Policy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "secretsmanager:GetSecretValue" in as_list(st["Action"]):
                for role in refs(policy["Properties"]["Roles"]):
                    readers.setdefault(role, set()).update(refs(st["Resource"]) & secrets)
    return readers


def test_only_the_store_functions_can_read_the_secrets(s: Synth) -> None:
    secrets = {s.logical_id(s.stack.usage_store.secret), s.logical_id(s.stack.database.secret)}
    (attachment,) = s.of_type("AWS::SecretsManager::SecretTargetAttachment")
    secrets.add(attachment)
    readers = secret_readers(s, secrets)
    fn_roles = {s.role_of(n) for n in HANDLERS}
    for name in HANDLERS:
        # no function reads the DB secret: IAM auth through RDS Proxy (issue 18 item 3)
        want = {s.logical_id(s.stack.usage_store.secret)} if name in USAGE_READERS else set()
        assert readers.get(s.role_of(name), set()) == want, name
    others = set(readers) - fn_roles
    # besides the functions only RDS Proxy reads a secret (the DB one it authenticates with)
    assert all("Proxy" in r for r in others), others
    assert all(readers[r] == {attachment} for r in others)


def test_only_the_invoice_functions_and_the_webhook_can_read_the_stripe_secret(s: Synth) -> None:
    stripe = s.logical_id(s.stack.billing.stripe_secret)
    readers = {role for role, found in secret_readers(s, {stripe}).items() if found}
    assert readers == {s.role_of(n) for n in STRIPE_READERS}, readers
    for name in STRIPE_READERS:
        (st,) = [st for st in s.statements(s.role_of(name)) if stripe in refs(st["Resource"])]
        assert set(as_list(st["Action"])) == {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
        assert st["Resource"] == {"Ref": stripe}, name


# --- API -------------------------------------------------------------------------------------------------

def test_http_api_routes_reach_their_functions(s: Synth) -> None:
    integrations = s.of_type("AWS::ApiGatewayV2::Integration")
    routes = {r["Properties"]["RouteKey"]: r["Properties"] for r in s.of_type("AWS::ApiGatewayV2::Route").values()}
    assert set(routes) == {"POST /api/v1/events", "ANY /api/v1/{proxy+}", "GET /api/v1/openapi.json", "GET /healthz",
                           "GET /readyz", "POST /api/v1/apps/stripe/webhook", "GET /portal", "GET /portal/{proxy+}",
                           "ANY /api/v2/{proxy+}", "GET /", "GET /api/docs", "GET /api/docs/{proxy+}",
                           "POST /api/v1/apps/{appId}/stripe/webhook", "GET /console", "GET /console/{proxy+}"}

    def function_of(route: dict[str, Any]) -> str:
        (integration,) = refs(route["Target"])
        props = integrations[integration]["Properties"]
        assert props["IntegrationType"] == "AWS_PROXY" and props["PayloadFormatVersion"] == "2.0"
        (fn,) = refs(props["IntegrationUri"])
        return fn

    ingest, api, auth = s.function("ingest")[0], s.function("api")[0], s.function("authorizer")[0]
    webhook = s.function("stripe_webhook")[0]
    assert function_of(routes["POST /api/v1/events"]) == ingest
    assert function_of(routes["POST /api/v1/apps/stripe/webhook"]) == webhook
    assert function_of(routes["POST /api/v1/apps/{appId}/stripe/webhook"]) == webhook  # each app's own (issue 16)
    for key in ("ANY /api/v1/{proxy+}", "ANY /api/v2/{proxy+}", "GET /api/v1/openapi.json", "GET /healthz",
                "GET /readyz", "GET /portal", "GET /portal/{proxy+}", "GET /", "GET /api/docs", "GET /api/docs/{proxy+}",
                "GET /console", "GET /console/{proxy+}"):
        assert function_of(routes[key]) == api, key
    # API keys: every route but health, the API document, Stripe's webhook (Stripe signs it) and the portal's
    # page (its data calls under /api/v1/portal/* carry a portal token) goes through the authorizer (simple
    # responses, cached per Authorization header).
    (authorizer_id, authorizer), = s.of_type("AWS::ApiGatewayV2::Authorizer").items()
    a = authorizer["Properties"]
    assert a["AuthorizerType"] == "REQUEST" and a["EnableSimpleResponses"] is True
    assert a["IdentitySource"] == ["$request.header.Authorization"] and a["AuthorizerResultTtlInSeconds"] == 300
    assert auth in refs(a["AuthorizerUri"])
    for key, route in routes.items():
        if key in PUBLIC_ROUTES:
            assert route.get("AuthorizationType", "NONE") == "NONE", key
        else:
            assert route["AuthorizationType"] == "CUSTOM" and refs(route["AuthorizerId"]) == {authorizer_id}, key
    invokers = [p["Properties"] for p in s.of_type("AWS::Lambda::Permission").values()
                if p["Properties"]["Principal"] == "apigateway.amazonaws.com"]
    assert {next(iter(refs(p["FunctionName"]))) for p in invokers} == {ingest, api, auth, webhook}
    # each public route states why in its cdk-nag suppression (infra/nag.py)
    public = {key: s.resources[s.logical_id(s.stack.http.routes[key])] for key in PUBLIC_ROUTES}
    for key, route in public.items():
        (rule,) = [r for r in route["Metadata"]["cdk_nag"]["rules_to_suppress"] if r["id"] == "AwsSolutions-APIG4"]
        assert rule["reason"].startswith("Public on purpose: ") and len(rule["reason"]) > 100, key
    assert "Stripe-Signature" in dumps(public["POST /api/v1/apps/stripe/webhook"]["Metadata"])
    (stage,) = s.of_type("AWS::ApiGatewayV2::Stage").values()
    settings = stage["Properties"]
    assert settings["AutoDeploy"] is True and settings["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0
    assert refs(settings["AccessLogSettings"]["DestinationArn"]) == {s.logical_id(s.stack.http.access_logs)}
    assert json.loads(settings["AccessLogSettings"]["Format"])["status"] == "$context.status"


# --- billing ---------------------------------------------------------------------------------------------

def test_invoice_documents_bucket_is_private_and_only_the_invoice_functions_use_it(s: Synth) -> None:
    bucket = s.logical_id(s.stack.billing.documents)
    p = s.resources[bucket]["Properties"]
    assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]  # SSE-S3, as the adapter puts
    assert p["PublicAccessBlockConfiguration"] == {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                                   "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert p["VersioningConfiguration"] == {"Status": "Enabled"}
    (policy,) = [v["Properties"]["PolicyDocument"] for v in s.of_type("AWS::S3::BucketPolicy").values()
                 if refs(v["Properties"]["Bucket"]) == {bucket}]
    assert {"Action": "s3:*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}, "Effect": "Deny",
            "Principal": {"AWS": "*"}, "Resource": [{"Fn::GetAtt": [bucket, "Arn"]},
                                                    {"Fn::Join": ["", [{"Fn::GetAtt": [bucket, "Arn"]}, "/*"]]}]} \
        in policy["Statement"]
    # the bucket policy allows nothing but the non-prod auto-delete (on `cdk destroy`)
    allowed = [st for st in policy["Statement"] if st["Effect"] == "Allow"]
    assert all("AutoDeleteObjects" in dumps(st["Principal"]) for st in allowed), allowed

    # api and billing_run put and presign-get documents under invoices/, nothing more; no one else touches S3
    granted: dict[str, list[dict[str, Any]]] = {}
    for pol in s.of_type("AWS::IAM::Policy").values():
        for st in pol["Properties"]["PolicyDocument"]["Statement"]:
            if bucket in refs(st["Resource"]) or any(a.startswith("s3:") for a in as_list(st["Action"])):
                for role in refs(pol["Properties"]["Roles"]):
                    granted.setdefault(role, []).append(st)
    assert set(granted) == {s.role_of(n) for n in INVOICE_FUNCTIONS}, set(granted)
    for name in INVOICE_FUNCTIONS:
        (st,) = granted[s.role_of(name)]
        assert sorted(as_list(st["Action"])) == ["s3:GetObject", "s3:PutObject"] and st["Effect"] == "Allow"
        assert st["Resource"] == {"Fn::Join": ["", [{"Fn::GetAtt": [bucket, "Arn"]}, "/invoices/*"]]}, name
    for name in HANDLERS:
        want = {"Ref": bucket} if name in INVOICE_FUNCTIONS else None
        assert env_of(s, name).get("BILLOW_DOCUMENTS_BUCKET") == want, name
    # the prefix wildcard is covered by its own stated suppression, on exactly those roles' policies
    writers = {s.role_of(n) for n in INVOICE_FUNCTIONS}
    for pid, pol in s.of_type("AWS::IAM::Policy").items():
        rules = pol.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
        covers = [r for r in rules if f"Resource::<{bucket}.Arn>/invoices/*" in r.get("applies_to", [])]
        assert bool(covers) == (refs(pol["Properties"]["Roles"]) <= writers), pid
        assert all(r["id"] == "AwsSolutions-IAM5" and len(r["reason"]) > 60 for r in covers)


# --- streaming -------------------------------------------------------------------------------------------

def test_msk_with_iam_auth_in_the_app_subnets(s: Synth) -> None:
    # issue 18 item 9: non-prod stages run MSK provisioned (prod's MSK Serverless: tests/infra/test_costs.py)
    (cluster_id, cluster), = s.of_type("AWS::MSK::Cluster").items()
    p = cluster["Properties"]
    assert p["ClientAuthentication"]["Sasl"] == {"Iam": {"Enabled": True}}
    app_subnets = {s.stack.resolve(sn.node.default_child.logical_id) for sn in s.stack.network.vpc.private_subnets}
    assert refs(p["BrokerNodeGroupInfo"]["ClientSubnets"]) == app_subnets
    brokers_sg = s.logical_id(s.stack.streaming.security_group)
    assert refs(p["BrokerNodeGroupInfo"]["SecurityGroups"]) == {brokers_sg}
    ingress = [r["Properties"] for r in s.of_type("AWS::EC2::SecurityGroupIngress").values()
               if refs(r["Properties"]["GroupId"]) == {brokers_sg}]
    sources = {next(iter(refs(r["SourceSecurityGroupId"]))) for r in ingress if r["FromPort"] == 9098}
    # the functions (produce) and the group itself (the MSK trigger's pollers use the cluster's group)
    assert sources == {brokers_sg, s.logical_id(s.stack.network.functions_sg)}
    assert all(r["FromPort"] == r["ToPort"] == 9098 for r in ingress)
    egress = [r["Properties"] for r in s.of_type("AWS::EC2::SecurityGroupEgress").values()
              if refs(r["Properties"]["GroupId"]) == {brokers_sg}]
    egress += s.resources[brokers_sg]["Properties"].get("SecurityGroupEgress", [])  # inline (CIDR) rules
    assert {(r["FromPort"], r.get("CidrIp")) for r in egress} == {(9098, None), (443, "0.0.0.0/0")}


def test_msk_trigger_feeds_the_usage_sink(s: Synth) -> None:
    (esm,) = [m for m in s.of_type("AWS::Lambda::EventSourceMapping").values() if "Topics" in m["Properties"]]
    p = esm["Properties"]
    sink_id, _ = s.function("usage_sink")
    assert p["FunctionName"] == {"Ref": sink_id}
    assert p["EventSourceArn"] == {"Ref": s.logical_id(s.stack.streaming.cluster)}  # MSK provisioned: Ref is the ARN
    assert p["Topics"] == [TOPIC] and p["StartingPosition"] == "TRIM_HORIZON" and p["BatchSize"] == 1000
    assert p["AmazonManagedKafkaEventSourceConfig"] == {"ConsumerGroupId": "billow-usage-sink"}
    # Issue 15: a usage-store outage blocks the partition instead of dropping batches (see
    # test_a_store_outage_blocks_the_partition_and_pages); the on-failure destination is gone.
    assert "DestinationConfig" not in p
    assert "ProvisionedPollerConfig" not in p  # issue 18 item 9: on-demand off prod (prod: tests/infra/test_costs.py)
    assert "FunctionResponseTypes" not in p  # the sink returns counts, not batchItemFailures
    # The functions reach SQS (the sink's dead letters) through the VPC's interface endpoint
    (endpoint,) = [e for e in s.of_type("AWS::EC2::VPCEndpoint").values()  # S3 has a gateway endpoint too
                   if e["Properties"].get("VpcEndpointType") == "Interface"]
    assert ".sqs" in dumps(endpoint["Properties"]["ServiceName"]) and endpoint["Properties"]["PrivateDnsEnabled"]
    sink_can_send = [st for st in s.statements(s.role_of("usage_sink")) if "sqs:SendMessage" in as_list(st["Action"])]
    assert {next(iter(refs(st["Resource"]))) for st in sink_can_send} == {s.logical_id(s.stack.dead_letters)}


def test_a_store_outage_blocks_the_partition_and_pages(s: Synth) -> None:
    """Lambda's Kafka event source mapping (provisioned mode) retries a failing batch without limit when
    MaximumRetryAttempts is -1 and there is no on-failure destination (with one, Lambda caps retries at 10),
    and MaximumRecordAge -1 (the default) never discards a record for its age. Nothing is committed past
    the failing batch, so a ClickHouse outage of any length loses nothing within the topic's retention."""
    (esm,) = [m for m in s.of_type("AWS::Lambda::EventSourceMapping").values() if "Topics" in m["Properties"]]
    p = esm["Properties"]
    # issue 18 item 9: off prod the trigger is in on-demand mode, where retry controls do not exist and a failing
    # batch is retried until it succeeds or leaves the topic (-1, the default); prod sets -1 with its provisioned
    # pollers (tests/infra/test_costs.py)
    assert p.get("MaximumRetryAttempts", -1) == -1
    assert "DestinationConfig" not in p
    assert p.get("MaximumRecordAgeInSeconds", -1) == -1
    assert p.get("BisectBatchOnFunctionError", False) is False  # halving a batch cannot help a store outage
    assert "ProvisionedPollerConfig" not in p
    assert not [q for q in s.of_type("AWS::SQS::Queue").values()
                if "failed-batches" in dumps(q["Properties"].get("QueueName", ""))]
    # The blocked partition pages: OffsetLag above zero while no invocation of the sink succeeds.
    alarms = {a["Properties"]["AlarmName"]: a["Properties"] for a in s.of_type("AWS::CloudWatch::Alarm").values()}
    blocked = alarms["billow-test-usage-sink-blocked"]
    assert refs(blocked["AlarmActions"]) == {s.logical_id(s.stack.alarms.topic)}
    metrics = {m["Id"]: m for m in blocked["Metrics"]}
    assert {m["MetricStat"]["Metric"]["MetricName"] for m in metrics.values() if "MetricStat" in m} == \
        {"OffsetLag", "Invocations", "Errors"}
    for m in metrics.values():
        if "MetricStat" in m:
            assert m["MetricStat"]["Metric"]["Dimensions"] == \
                [{"Name": "FunctionName", "Value": {"Ref": s.function("usage_sink")[0]}}]
    (expr,) = [m for m in metrics.values() if "Expression" in m]
    assert expr.get("ReturnData", True) is True and "lag" in expr["Expression"]
    assert blocked["ComparisonOperator"] == "GreaterThanOrEqualToThreshold" and blocked["Threshold"] == 1
    assert blocked["EvaluationPeriods"] == blocked["DatapointsToAlarm"] == 5
    assert blocked["TreatMissingData"] == "notBreaching"  # an idle stack emits nothing


def test_kafka_permissions_are_scoped_to_cluster_topic_and_group(s: Synth) -> None:
    ingest = s.statements(s.role_of("ingest"))
    sink = s.statements(s.role_of("usage_sink"))

    def resources_for(sts: list[dict[str, Any]], action: str) -> str:
        return dumps([st["Resource"] for st in sts if action in as_list(st["Action"])])

    assert {"kafka-cluster:Connect", "kafka-cluster:WriteData", "kafka-cluster:DescribeTopic",
            "kafka-cluster:CreateTopic", "kafka-cluster:WriteDataIdempotently"} <= s.actions(s.role_of("ingest"))
    assert not {a for a in s.actions(s.role_of("ingest")) if a in ("kafka-cluster:ReadData", "kafka-cluster:AlterGroup")}
    for action in ("kafka-cluster:WriteData", "kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic"):
        assert ":topic/" in resources_for(ingest, action) and TOPIC in resources_for(ingest, action)
    assert {"kafka-cluster:Connect", "kafka-cluster:ReadData", "kafka-cluster:DescribeTopic",
            "kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"} <= s.actions(s.role_of("usage_sink"))
    assert "kafka-cluster:WriteData" not in s.actions(s.role_of("usage_sink"))
    assert TOPIC in resources_for(sink, "kafka-cluster:ReadData")
    assert ":group/" in resources_for(sink, "kafka-cluster:AlterGroup")
    assert "billow-usage-sink" in resources_for(sink, "kafka-cluster:AlterGroup")
    assert not any(a.startswith("kafka") for a in s.actions(s.role_of("api")))


def test_wildcard_resources_only_where_a_stated_suppression_covers_them(s: Synth) -> None:
    for pid, policy in s.of_type("AWS::IAM::Policy").items():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            wildcard = [r for r in as_list(st["Resource"]) if isinstance(r, str) and "*" in r]
            if not wildcard:
                continue
            assert all(a.startswith("xray:") for a in as_list(st["Action"])), (pid, st)
            rules = policy.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
            covering = [r for r in rules if r["id"] == "AwsSolutions-IAM5" and "Resource::*" in r.get("applies_to", [])]
            assert covering and len(covering[0]["reason"]) > 60, (pid, rules)
    managed = {dumps(arn) for role in s.of_type("AWS::IAM::Role").values()
               for arn in role["Properties"].get("ManagedPolicyArns", [])}
    names = {re.sub(r".*policy/", "", m).strip('"]}') for m in managed}
    assert names == {"service-role/AWSLambdaVPCAccessExecutionRole", "service-role/AWSLambdaMSKExecutionRole",
                     "service-role/AWSLambdaBasicExecutionRole"}, names


# --- database --------------------------------------------------------------------------------------------

def test_aurora_serverless_v2_in_isolated_subnets_behind_rds_proxy(s: Synth) -> None:
    (cluster_id, cluster), = s.of_type("AWS::RDS::DBCluster").items()
    p = cluster["Properties"]
    assert p["Engine"] == "aurora-postgresql" and p["StorageEncrypted"] is True
    assert p["ServerlessV2ScalingConfiguration"] == {"MinCapacity": 0.5, "MaxCapacity": 8}
    assert cluster["DeletionPolicy"] == "Delete"  # non-prod is disposable; prod is tested in test_prod_stage
    (instance,) = s.of_type("AWS::RDS::DBInstance").values()
    assert instance["Properties"]["DBInstanceClass"] == "db.serverless"
    assert instance["Properties"]["PubliclyAccessible"] is False
    (subnet_group,) = s.of_type("AWS::RDS::DBSubnetGroup").values()
    isolated = {s.stack.resolve(sn.node.default_child.logical_id) for sn in s.stack.network.vpc.isolated_subnets}
    assert refs(subnet_group["Properties"]["SubnetIds"]) == isolated
    (proxy,) = s.of_type("AWS::RDS::DBProxy").values()
    pp = proxy["Properties"]
    assert pp["RequireTLS"] is True and pp["EngineFamily"] == "POSTGRESQL" and pp["DBProxyName"] == "billow-test-db"
    (attachment,) = s.of_type("AWS::SecretsManager::SecretTargetAttachment")
    assert [a["SecretArn"] for a in pp["Auth"]] == [{"Ref": attachment}]
    (target_group,) = s.of_type("AWS::RDS::DBProxyTargetGroup").values()
    assert target_group["Properties"]["DBClusterIdentifiers"] == [{"Ref": cluster_id}]
    # Only the functions reach the proxy, only the proxy (and the rotation function) reach the cluster.
    ingress: dict[str, list[str]] = {}
    for r in s.of_type("AWS::EC2::SecurityGroupIngress").values():
        (group,), (source,) = refs(r["Properties"]["GroupId"]), refs(r["Properties"]["SourceSecurityGroupId"])
        ingress.setdefault(group, []).append(source)
    assert ingress[s.logical_id(s.stack.database.proxy_security_group)] == [s.logical_id(s.stack.network.functions_sg)]
    db_sources = set(ingress[s.logical_id(s.stack.database.security_group)])
    assert s.logical_id(s.stack.database.proxy_security_group) in db_sources
    assert all("Proxy" in g or "Rotation" in g for g in db_sources), db_sources
    assert s.of_type("AWS::SecretsManager::RotationSchedule")


# --- schedules -------------------------------------------------------------------------------------------

def test_the_api_hands_backtests_to_the_billing_run_worker(s: Synth) -> None:
    """Issue 20: Lambda freezes a thread once the API answers, so the API function's job runner sends each accepted
    backtest to billing_run's job queue, whose handler runs it (functions/billing_run: services/jobs.run_job)."""
    from billow.domain.backtest_jobs import STALE_AFTER
    from billow.services.jobs import JOB_KINDS

    queue = s.logical_id(s.stack.schedules.queues["billing_run"])
    env = env_of(s, "api")
    assert env["BILLOW_JOB_RUNNER"] == "queue" and env["BILLOW_JOB_QUEUE_URL"] == {"Ref": queue}
    sends = [st for st in s.statements(s.role_of("api")) if "sqs:SendMessage" in as_list(st["Action"])]
    assert any(refs(st["Resource"]) == {queue} for st in sends)
    assert not {"sqs:ReceiveMessage", "sqs:DeleteMessage"} & {
        a for st in s.statements(s.role_of("api")) if refs(st["Resource"]) == {queue} for a in as_list(st["Action"])}
    fn_id, fn = s.function("billing_run")
    consumers = [m["Properties"]["FunctionName"] for m in s.of_type("AWS::Lambda::EventSourceMapping").values()
                 if refs(m["Properties"]["EventSourceArn"]) == {queue}]
    assert consumers == [{"Ref": fn_id}] and "backtest" in JOB_KINDS
    # A job not written for STALE_AFTER reads failed: longer than a worker can live, so only a dead worker's job.
    assert STALE_AFTER.total_seconds() > fn["Properties"]["Timeout"]
    for name in set(HANDLERS) - {"api"}:  # nobody else queues jobs
        assert "BILLOW_JOB_QUEUE_URL" not in env_of(s, name), name


def test_schedules_send_each_job_to_its_own_queue(s: Synth) -> None:
    from infra.constructs.schedules import JOBS

    schedules = {json.loads(v["Properties"]["Target"]["Input"])["job"]: v["Properties"]
                 for v in s.of_type("AWS::Scheduler::Schedule").values()}
    assert set(schedules) == set(JOBS) == set(JOB_HANDLERS) == {"billing_run", "notify_dispatch"}
    queues = s.of_type("AWS::SQS::Queue")
    scheduler_role = s.logical_id(s.stack.schedules.role)
    can_send = {next(iter(refs(st["Resource"]))) for st in s.statements(scheduler_role)
                if "sqs:SendMessage" in as_list(st["Action"])}
    dlq = s.logical_id(s.stack.schedules.dead_letters)
    for job, p in schedules.items():
        assert p["ScheduleExpression"] == JOBS[job] and p["State"] == "ENABLED"
        message = json.loads(p["Target"]["Input"])
        assert message == {"job": job, "namespace": NAMESPACE, "scheduledTime": "<aws.scheduler.scheduled-time>",
                           "executionId": "<aws.scheduler.execution-id>"}
        (queue_id,) = refs(p["Target"]["Arn"])
        queue = queues[queue_id]["Properties"]
        assert queue["QueueName"] == f"billow-test-jobs-{job.replace('_', '-')}"
        assert refs(queue["RedrivePolicy"]) == {dlq}
        assert refs(p["Target"]["RoleArn"]) == {scheduler_role}
        assert refs(p["Target"]["DeadLetterConfig"]["Arn"]) == {dlq}
        assert queue_id in can_send
    assert can_send == {s.logical_id(q) for q in s.stack.schedules.queues.values()} | {dlq}


def test_the_stack_deploys_exactly_the_listed_handlers(s: Synth) -> None:
    """HANDLERS is a list, not what happens to be on disk: every handler directory is deployed, every deployed
    function has its directory, and every schedule's queue is consumed by its job's function."""
    from infra.constructs.schedules import JOBS
    from infra.stack import REPO

    deployed = {v["Properties"]["Handler"] for v in s.of_type("AWS::Lambda::Function").values()
                if v["Properties"].get("Handler", "").startswith("functions.")}  # not CDK's own providers
    assert deployed == set(HANDLERS.values())
    assert {d.name for d in (REPO / "functions").iterdir() if (d / "handler.py").is_file()} == set(HANDLERS)
    assert set(JOBS) == set(JOB_HANDLERS)
    for job, queue in s.stack.schedules.queues.items():
        consumers = {m["Properties"]["FunctionName"]["Ref"] for m in s.of_type("AWS::Lambda::EventSourceMapping").values()
                     if refs(m["Properties"]["EventSourceArn"]) == {s.logical_id(queue)}}
        assert consumers == {s.function(job)[0]}, job


# --- alarms ----------------------------------------------------------------------------------------------

def test_alarms_on_errors_dead_letters_and_consumer_lag(s: Synth) -> None:
    alarms = [a["Properties"] for a in s.of_type("AWS::CloudWatch::Alarm").values()]
    topic = s.logical_id(s.stack.alarms.topic)
    assert all(refs(a["AlarmActions"]) == {topic} for a in alarms)
    # issue 18: errors page on a rate (> 1 % in 3 of 5 minutes; tests/infra/test_readiness.py), not on "> 0"
    errors = {next(iter(refs(m["MetricStat"]["Metric"]["Dimensions"]))) for a in alarms
              if a["AlarmName"].endswith("-errors") for m in a["Metrics"] if "MetricStat" in m}
    assert errors == {s.function(n)[0] for n in HANDLERS}
    for a in alarms:
        if a.get("MetricName") == "ApproximateNumberOfMessagesVisible":
            assert a["Threshold"] == 0 and a["ComparisonOperator"] == "GreaterThanThreshold", a
    depth = {next(iter(refs(a["Dimensions"]))) for a in alarms
             if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"}
    assert depth == {s.logical_id(q) for q in (s.stack.dead_letters, s.stack.schedules.dead_letters)}
    (lag,) = [a for a in alarms if a.get("MetricName") == "OffsetLag"]
    assert lag["Namespace"] == "AWS/Lambda" and lag["Statistic"] == "Maximum"
    assert lag["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": s.function("usage_sink")[0]}}]


# --- cdk-nag and synthesis -------------------------------------------------------------------------------

def test_cdk_nag_finds_nothing_unsuppressed(s: Synth) -> None:
    annotations = Annotations.from_stack(s.stack)
    errors = annotations.find_error("*", Match.string_like_regexp(".*AwsSolutions-.*"))
    warnings = annotations.find_warning("*", Match.string_like_regexp(".*(AwsSolutions|CdkNag).*"))
    assert not errors and not warnings, [f"{e.id}: {str(e.entry.data)[:120]}" for e in [*errors, *warnings]]


def test_non_prod_stage_leaves_nothing_behind_on_destroy(s: Synth) -> None:
    function_logs = {refs(f["Properties"]["LoggingConfig"]["LogGroup"]).pop()
                     for f in s.of_type("AWS::Lambda::Function").values() if "LoggingConfig" in f["Properties"]}
    assert len(function_logs) == len(HANDLERS)
    for lid in function_logs | {s.logical_id(s.stack.http.access_logs)}:
        assert s.resources[lid]["DeletionPolicy"] == "Delete", lid
    for secret in (s.stack.usage_store.secret, s.stack.billing.stripe_secret):
        assert s.resources[s.logical_id(secret)]["DeletionPolicy"] == "Delete"
    bucket = s.logical_id(s.stack.billing.documents)
    assert s.resources[bucket]["DeletionPolicy"] == "Delete"
    (auto_delete,) = s.of_type("Custom::S3AutoDeleteObjects").values()  # empties the bucket first
    assert auto_delete["Properties"]["BucketName"] == {"Ref": bucket}
    outputs = s.template.to_json()["Outputs"]
    assert {"ApiUrl", "ClickHouseSecretArn", "AlarmTopicArn", "NatPublicIp1", "StripeSecretArn",
            "DocumentsBucketName"} <= set(outputs)
    assert outputs["StripeSecretArn"]["Value"] == {"Ref": s.logical_id(s.stack.billing.stripe_secret)}
    assert outputs["DocumentsBucketName"]["Value"] == {"Ref": bucket}


def test_every_suppression_states_a_specific_reason(s: Synth) -> None:
    found = [(lid, r) for lid, res in s.resources.items()
             for r in res.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])]
    assert {r["id"] for _, r in found} >= {"AwsSolutions-IAM4", "AwsSolutions-IAM5", "AwsSolutions-L1",
                                           "AwsSolutions-APIG4", "AwsSolutions-SQS3", "AwsSolutions-SMG4",
                                           "AwsSolutions-S1"}
    for lid, rule in found:
        assert len(rule["reason"]) >= 60, (lid, rule)
        if rule["id"] in ("AwsSolutions-IAM4", "AwsSolutions-IAM5"):
            assert rule.get("applies_to"), (lid, rule)  # wildcard findings are named, not blanket
    assert not s.stack.node.metadata or "cdk_nag" not in dumps(
        [m.data for m in s.stack.node.metadata])  # nothing suppressed stack-wide


def test_plain_synth_writes_a_cloud_assembly_with_the_assets(s: Synth) -> None:
    assembly = s.app.synth()
    out = Path(assembly.directory)
    template = json.loads((out / s.stack.template_file).read_text())
    assert {"AWS::Lambda::Function", "AWS::MSK::Cluster"} <= {r["Type"] for r in template["Resources"].values()}
    layer = next(r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::LayerVersion")
    layer_dir = out / layer["Metadata"]["aws:asset:path"]
    top = {p.name for p in layer_dir.iterdir()}
    assert top == {"python"}, top  # layer content only: no build stamps
    packages = {p.name.lower() for p in (layer_dir / "python").iterdir()}
    assert {"confluent_kafka", "pg8000", "clickhouse_connect", "aws_lambda_powertools"} <= packages
    assert not any(p.startswith(("chdb", "boto3", "botocore")) for p in packages), packages
    _, api = s.function("api")
    code_dir = out / template["Resources"][s.function("api")[0]]["Metadata"]["aws:asset:path"]
    assert (code_dir / "functions" / "api" / "handler.py").is_file() and (code_dir / "billow" / "bootstrap.py").is_file()


# --- notifications ---------------------------------------------------------------------------------------

def test_notify_dispatch_runs_on_its_tick_and_its_wake_up_queue(s: Synth) -> None:
    fn_id, fn = s.function("notify_dispatch")
    env = env_of(s, "notify_dispatch")
    queue = s.logical_id(s.stack.notifications.queue)
    assert set(env) == COMMON_ENV | CLICKHOUSE_ENV | NOTIFY_ENV | {"BILLOW_NOTIFY_EMAIL_FROM"}
    assert env["BILLOW_NOTIFY_QUEUE_URL"] == {"Ref": queue} == env_of(s, "api")["BILLOW_NOTIFY_QUEUE_URL"]
    sources = {next(iter(refs(m["Properties"]["EventSourceArn"]))): m["Properties"]
               for m in s.of_type("AWS::Lambda::EventSourceMapping").values()
               if m["Properties"]["FunctionName"] == {"Ref": fn_id}}
    assert set(sources) == {queue, s.logical_id(s.stack.schedules.queues["notify_dispatch"])}
    q = s.resources[queue]["Properties"]
    assert refs(q["RedrivePolicy"]) == {s.logical_id(s.stack.schedules.dead_letters)}  # the alarmed jobs DLQ
    assert q["VisibilityTimeout"] >= fn["Properties"]["Timeout"] and q["SqsManagedSseEnabled"] is True
    for writer in ("api", "notify_dispatch"):
        sends = [st for st in s.statements(s.role_of(writer)) if "sqs:SendMessage" in as_list(st["Action"])]
        assert any(refs(st["Resource"]) == {queue} for st in sends), writer
    (ses,) = [st for st in s.statements(s.role_of("notify_dispatch")) if "ses:SendEmail" in as_list(st["Action"])]
    assert "*" not in dumps(ses["Resource"]) and "identity/" in dumps(ses["Resource"])
    assert not any(a.startswith("ses:") for n in HANDLERS if n != "notify_dispatch" for a in s.actions(s.role_of(n)))
    # the handler tells the schedule's tick (evaluate rules, then deliver) from a wake-up (deliver only)
    from functions.notify_dispatch.handler import is_tick
    from infra.constructs.schedules import job_message

    assert is_tick(job_message("notify_dispatch", NAMESPACE))
    assert not is_tick('{"job": "notify_dispatch", "reason": "wake"}')


# --- schema migrations -----------------------------------------------------------------------------------

def test_migrations_run_once_per_deploy_before_every_other_function(s: Synth) -> None:
    """One CDK trigger invokes functions/migrate (meta database + ClickHouse) after the database and before any
    other function is created or updated; no other function runs DDL (billow.bootstrap.build in Lambda)."""
    fn_id, fn = s.function("migrate")
    (trigger_id, trigger), = s.of_type("Custom::Trigger").items()
    (version,) = refs(trigger["Properties"]["HandlerArn"])  # the function's current version: a new one per code
    assert s.resources[version]["Type"] == "AWS::Lambda::Version"  # change, and the trigger runs again
    assert s.resources[version]["Properties"]["FunctionName"] == {"Ref": fn_id}
    assert trigger["Properties"]["ExecuteOnHandlerChange"] is True
    assert trigger["Properties"]["InvocationType"] == "RequestResponse"  # a failed migration fails the deploy
    assert set(env_of(s, "migrate")) == COMMON_ENV | CLICKHOUSE_ENV | MIGRATE_ENV
    assert fn["Properties"]["Timeout"] >= 300
    after = set(as_list(trigger.get("DependsOn", [])))
    writer = s.stack.database.cluster.node.find_child("Writer").node.default_child
    assert {s.logical_id(s.stack.database.cluster), s.logical_id(writer), s.logical_id(s.stack.database.proxy)} <= after
    for name in HANDLERS:
        if name != "migrate":
            fid, f = s.function(name)
            assert trigger_id in as_list(f.get("DependsOn", [])), name  # new code never meets an old schema
