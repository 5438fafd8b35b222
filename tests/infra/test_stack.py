"""The CDK app: what `cdk deploy` would create, asserted on the synthesized template (CloudFormation), plus
cdk-nag's AwsSolutions checks and the Lambda asset limits. One synthesis per module (jsii runs Node)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Annotations, Match, Template
from infra.app import build_app
from layers.build import EXCLUDED, LAYER_ZIP_LIMIT, OUT, build


@pytest.fixture(scope="module")
def synthesized() -> tuple[Any, Template, dict[str, Any]]:
    app, stack = build_app(App(context={"stage": "test", "namespace": "acme"}))
    template = Template.from_stack(stack)
    return stack, template, template.to_json()["Resources"]


def of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def function_by_handler(resources: dict[str, Any], handler: str) -> tuple[str, dict[str, Any]]:
    found = [(k, v) for k, v in of_type(resources, "AWS::Lambda::Function").items()
             if v["Properties"].get("Handler") == handler]
    assert len(found) == 1, handler
    return found[0]


HANDLERS = ["functions.api.handler.lambda_handler", "functions.ingest.handler.lambda_handler",
            "functions.usage_sink.handler.lambda_handler"]


def test_every_handler_is_a_function_on_the_layer_with_secrets_by_arn(synthesized: Any) -> None:
    _, _, res = synthesized
    layers = of_type(res, "AWS::Lambda::LayerVersion")
    assert len(layers) == 1
    layer_id = next(iter(layers))
    for handler in HANDLERS:
        _, fn = function_by_handler(res, handler)
        p = fn["Properties"]
        assert p["Runtime"] == "python3.13" and p["Architectures"] == ["arm64"]
        assert {"Ref": layer_id} in p["Layers"]
        env = p["Environment"]["Variables"]
        assert env["BILLOW_NAMESPACE"] == "acme" and env["BILLOW_USAGE_STORE"] == "clickhouse"
        assert isinstance(env["BILLOW_DB_SECRET_ARN"], dict) and isinstance(env["BILLOW_CLICKHOUSE_SECRET_ARN"], dict)
        assert "VpcConfig" in p
        plain = json.dumps(env).lower()
        assert "password" not in plain and "secretstring" not in plain
    ingest = function_by_handler(res, HANDLERS[1])[1]["Properties"]["Environment"]["Variables"]
    assert ingest["BILLOW_BUS"] == "kafka" and ingest["BILLOW_KAFKA_AUTH"] == "iam"
    assert "BootstrapBrokerStringSaslIam" in json.dumps(ingest["BILLOW_KAFKA_BOOTSTRAP"])
    sink = function_by_handler(res, HANDLERS[2])[1]["Properties"]["Environment"]["Variables"]
    assert "DeadLetters" in json.dumps(sink["BILLOW_DLQ_URL"])


def test_http_api_routes_reach_their_functions(synthesized: Any) -> None:
    _, _, res = synthesized
    integrations = of_type(res, "AWS::ApiGatewayV2::Integration")
    routes = {r["Properties"]["RouteKey"]: r["Properties"]["Target"] for r in of_type(res, "AWS::ApiGatewayV2::Route").values()}
    assert set(routes) == {"POST /api/v1/events", "ANY /api/v1/{proxy+}", "GET /healthz"}

    def function_of(target: Any) -> str:
        integ_id = target["Fn::Join"][1][1]["Ref"]
        uri = integrations[integ_id]["Properties"]["IntegrationUri"]
        return str(uri["Fn::GetAtt"][0])

    ingest_id, _ = function_by_handler(res, HANDLERS[1])
    api_id, _ = function_by_handler(res, HANDLERS[0])
    assert function_of(routes["POST /api/v1/events"]) == ingest_id
    assert function_of(routes["ANY /api/v1/{proxy+}"]) == api_id == function_of(routes["GET /healthz"])
    stage = next(iter(of_type(res, "AWS::ApiGatewayV2::Stage").values()))["Properties"]
    assert stage["AccessLogSettings"]["DestinationArn"] and stage["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0


def test_msk_serverless_with_iam_feeds_the_usage_sink(synthesized: Any) -> None:
    _, template, res = synthesized
    template.has_resource_properties("AWS::MSK::ServerlessCluster", {
        "ClientAuthentication": {"Sasl": {"Iam": {"Enabled": True}}}})
    sink_id, _ = function_by_handler(res, HANDLERS[2])
    (esm,) = of_type(res, "AWS::Lambda::EventSourceMapping").values()
    p = esm["Properties"]
    assert p["FunctionName"] == {"Ref": sink_id}
    assert p["Topics"] == ["billow.acme.events"] and p["StartingPosition"] == "TRIM_HORIZON"
    assert p["BatchSize"] == 1000 and p["BisectBatchOnFunctionError"] is True and p["MaximumRetryAttempts"] == 10
    assert "FailedBatches" in json.dumps(p["DestinationConfig"]["OnFailure"]["Destination"])
    assert p["AmazonManagedKafkaEventSourceConfig"]["ConsumerGroupId"] == "billow-usage-sink"


def test_aurora_serverless_v2_behind_rds_proxy_with_generated_secret(synthesized: Any) -> None:
    _, template, res = synthesized
    template.has_resource_properties("AWS::RDS::DBCluster", {
        "Engine": "aurora-postgresql", "StorageEncrypted": True,
        "ServerlessV2ScalingConfiguration": {"MinCapacity": 0.5, "MaxCapacity": 8}})
    template.has_resource_properties("AWS::RDS::DBInstance", {"DBInstanceClass": "db.serverless"})
    template.has_resource_properties("AWS::RDS::DBProxy", {"RequireTLS": True, "EngineFamily": "POSTGRESQL"})
    template.has_resource_properties("AWS::SecretsManager::Secret", {
        "GenerateSecretString": Match.object_like({"GenerateStringKey": "password"})})
    assert of_type(res, "AWS::SecretsManager::RotationSchedule")
    for fn_id in (function_by_handler(res, h)[0] for h in HANDLERS):  # every function can read the DB secret
        role = res[fn_id]["Properties"]["Role"]["Fn::GetAtt"][0]
        policies = [p for p in of_type(res, "AWS::IAM::Policy").values() if {"Ref": role} in p["Properties"]["Roles"]]
        actions = json.dumps([p["Properties"]["PolicyDocument"] for p in policies])
        assert "secretsmanager:GetSecretValue" in actions


def test_kafka_permissions_are_scoped_to_cluster_topic_and_group(synthesized: Any) -> None:
    _, _, res = synthesized

    def statements(handler: str) -> list[dict[str, Any]]:
        fn_id, fn = function_by_handler(res, handler)
        role = fn["Properties"]["Role"]["Fn::GetAtt"][0]
        return [s for p in of_type(res, "AWS::IAM::Policy").values() if {"Ref": role} in p["Properties"]["Roles"]
                for s in p["Properties"]["PolicyDocument"]["Statement"]]

    def actions(sts: list[dict[str, Any]]) -> set[str]:
        out: set[str] = set()
        for s in sts:
            out |= set(s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
        return out

    assert "kafka-cluster:WriteData" in actions(statements(HANDLERS[1]))
    assert "kafka-cluster:ReadData" not in actions(statements(HANDLERS[1]))
    assert {"kafka-cluster:ReadData", "kafka-cluster:AlterGroup"} <= actions(statements(HANDLERS[2]))
    assert not any(a.startswith("kafka-cluster:") for a in actions(statements(HANDLERS[0])))
    for handler in HANDLERS:
        for s in statements(handler):
            if s["Resource"] == "*" or (isinstance(s["Resource"], list) and "*" in s["Resource"]):
                acts = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
                assert all(a.startswith("xray:") for a in acts), s  # X-Ray has no resource-level permissions
    topic_stmt = next(s for s in statements(HANDLERS[1]) if "kafka-cluster:WriteData" in s["Action"])
    assert "billow.acme.events" in json.dumps(topic_stmt["Resource"])


def test_schedules_send_jobs_to_the_jobs_queue(synthesized: Any) -> None:
    _, _, res = synthesized
    schedules = of_type(res, "AWS::Scheduler::Schedule").values()
    jobs = {json.loads(s["Properties"]["Target"]["Input"])["job"]: s["Properties"] for s in schedules}
    assert set(jobs) == {"billing_run", "entitlement_reset", "notify_dispatch"}
    for p in jobs.values():
        assert "SchedulesJobs" in p["Target"]["Arn"]["Fn::GetAtt"][0]
        assert p["ScheduleExpression"].startswith("rate(")


def test_alarms_on_errors_dead_letters_and_consumer_lag(synthesized: Any) -> None:
    _, _, res = synthesized
    alarms = [a["Properties"] for a in of_type(res, "AWS::CloudWatch::Alarm").values()]
    names = {a["MetricName"] for a in alarms}
    assert {"Errors", "ApproximateNumberOfMessagesVisible", "OffsetLag"} <= names
    assert sum(a["MetricName"] == "Errors" for a in alarms) == 3
    assert sum(a["MetricName"] == "ApproximateNumberOfMessagesVisible" for a in alarms) == 2
    assert all(a["AlarmActions"] for a in alarms)


def test_cdk_nag_finds_nothing_unsuppressed(synthesized: Any) -> None:
    stack, _, _ = synthesized
    errors = Annotations.from_stack(stack).find_error("*", Match.string_like_regexp("AwsSolutions-.*"))
    warnings = Annotations.from_stack(stack).find_warning("*", Match.string_like_regexp("AwsSolutions-.*"))
    assert not errors and not warnings, [e.entry.data for e in errors + warnings]


def test_prod_stage_keeps_its_data(tmp_path: Path) -> None:
    _, stack = build_app(App(context={"stage": "prod"}), assets=OUT)
    Template.from_stack(stack).has_resource("AWS::RDS::DBCluster", {
        "Properties": Match.object_like({"DeletionProtection": True}), "DeletionPolicy": "Snapshot"})


def test_plain_synth_writes_a_cloud_assembly(tmp_path: Path) -> None:
    app, stack = build_app(App(outdir=str(tmp_path), context={"stage": "synth"}), assets=OUT)
    assembly = app.synth()
    template = json.loads((Path(assembly.directory) / stack.template_file).read_text())
    assert "AWS::Lambda::Function" in {r["Type"] for r in template["Resources"].values()}


def test_lambda_assets_fit_the_limits_and_never_carry_chdb() -> None:
    sizes = build()
    assert sizes["deps_zipped"] < LAYER_ZIP_LIMIT
    packages = {p.name.lower() for p in (OUT / "deps" / "python").iterdir()}
    assert not any(p.startswith(x) for p in packages for x in EXCLUDED)
    assert (OUT / "code" / "billow" / "bootstrap.py").exists()
    assert (OUT / "code" / "functions" / "usage_sink" / "handler.py").exists()
