"""Issue 18, asserted on the synthesized prod template: what only a real account would punish (alarms that can
publish and page on rates, bounded concurrency, prod guardrails, the Kafka topic made at deploy, the S3 gateway
endpoint, the Scheduler's trust)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.support import HANDLERS, Synth, as_list, dumps, refs, synthesize

ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "prod", "namespace": "acme", "account": ACCOUNT},
                      lambda_assets)


def alarms(s: Synth) -> dict[str, dict[str, Any]]:
    return {a["Properties"]["AlarmName"]: a["Properties"] for a in s.of_type("AWS::CloudWatch::Alarm").values()}


def metric_stats(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics an alarm reads: its single metric, or each MetricStat of its math expression."""
    if "MetricName" in alarm:
        return [{"Namespace": alarm["Namespace"], "MetricName": alarm["MetricName"],
                 "Dimensions": alarm.get("Dimensions", [])}]
    return [m["MetricStat"]["Metric"] for m in alarm.get("Metrics", []) if "MetricStat" in m]


def statements_of(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return list(policy["Statement"])


# --- 1. alarms that reach someone ------------------------------------------------------------------------

def test_cloudwatch_can_publish_to_the_encrypted_alarm_topic(prod: Synth) -> None:
    topic_id = prod.logical_id(prod.stack.alarms.topic)
    topic = prod.resources[topic_id]["Properties"]
    (key_id,) = refs(topic["KmsMasterKeyId"])  # a customer-managed key, not alias/aws/sns (CloudWatch cannot use it)
    key = prod.resources[key_id]
    assert key["Type"] == "AWS::KMS::Key" and key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain"  # prod
    cw_key = [st for st in statements_of(key["Properties"]["KeyPolicy"])
              if st["Effect"] == "Allow" and st.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]
    assert cw_key and {"kms:Decrypt", "kms:GenerateDataKey*"} <= {a for st in cw_key for a in as_list(st["Action"])}
    (policy,) = [p["Properties"] for p in prod.of_type("AWS::SNS::TopicPolicy").values()
                 if {"Ref": topic_id} in p["Properties"]["Topics"]]
    allow = [st for st in statements_of(policy["PolicyDocument"]) if st["Effect"] == "Allow"]
    (publish,) = [st for st in allow if "sns:Publish" in as_list(st["Action"])]
    assert publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert publish["Resource"] == {"Ref": topic_id}
    assert publish["Condition"]["StringEquals"]["aws:SourceAccount"] == ACCOUNT
    assert "alarm:" in dumps(publish["Condition"]["ArnLike"]["aws:SourceArn"])
    # the TLS-only deny stays
    assert any(st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
               for st in statements_of(policy["PolicyDocument"]))


def test_function_errors_page_on_a_rate_over_several_minutes_not_on_one_error(prod: Synth) -> None:
    found = alarms(prod)
    for name in HANDLERS:
        fn_id, _ = prod.function(name)
        (alarm,) = [a for a in found.values() if any(m["MetricName"] == "Errors" and refs(m["Dimensions"]) == {fn_id}
                                                     for m in metric_stats(a))
                    and "blocked" not in a["AlarmName"]]
        assert {m["MetricName"] for m in metric_stats(alarm)} == {"Errors", "Invocations"}, name
        (expr,) = [m for m in alarm["Metrics"] if "Expression" in m]
        assert "errors" in expr["Expression"] and "calls" in expr["Expression"] and "100" in expr["Expression"]
        assert alarm["Threshold"] == 1 and alarm["ComparisonOperator"] == "GreaterThanThreshold"  # > 1 % failed
        assert (alarm["DatapointsToAlarm"], alarm["EvaluationPeriods"]) == (3, 5), name  # in 3 of 5 minutes
        assert alarm["TreatMissingData"] == "notBreaching"
    assert not [a for a in found.values() if a.get("MetricName") == "Errors"]  # no "Errors > 0 for a minute"


def test_throttles_api_5xx_and_latency_page(prod: Synth) -> None:
    found = alarms(prod)
    for name in HANDLERS:
        fn_id, _ = prod.function(name)
        (alarm,) = [a for a in found.values() if a.get("MetricName") == "Throttles"
                    and refs(a["Dimensions"]) == {fn_id}]
        assert (alarm["DatapointsToAlarm"], alarm["EvaluationPeriods"]) == (3, 5) and alarm["Threshold"] == 0
    api_id = prod.logical_id(prod.stack.http.api)
    five_xx = found["billow-prod-api-5xx-rate"]
    assert {(m["Namespace"], m["MetricName"]) for m in metric_stats(five_xx)} == {("AWS/ApiGateway", "5xx"),
                                                                                 ("AWS/ApiGateway", "Count")}
    assert all(api_id in refs(m["Dimensions"]) for m in metric_stats(five_xx))
    assert five_xx["Threshold"] == 1 and (five_xx["DatapointsToAlarm"], five_xx["EvaluationPeriods"]) == (3, 5)
    latency = found["billow-prod-api-latency-p99"]
    assert latency["MetricName"] == "Latency" and latency["ExtendedStatistic"] == "p99"
    assert api_id in refs(latency["Dimensions"]) and 0 < latency["Threshold"] <= 10_000
    assert (latency["DatapointsToAlarm"], latency["EvaluationPeriods"]) == (3, 5)


def test_a_job_that_stops_consuming_its_queue_pages(prod: Synth) -> None:
    found = alarms(prod)
    assert prod.stack.job_fns  # billing_run and notify_dispatch exist in the repo
    for job in prod.stack.job_fns:
        queue_id = prod.logical_id(prod.stack.schedules.queues[job])
        (alarm,) = [a for a in found.values() if a.get("MetricName") == "ApproximateAgeOfOldestMessage"
                    and refs(a["Dimensions"]) == {queue_id}]
        assert alarm["Statistic"] == "Maximum" and alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert 0 < alarm["Threshold"] <= 3600, job  # a tick older than an hour: the job has stopped
        # a tick that failed once (visibility timeout) is not yet an outage
        visibility = prod.resources[queue_id]["Properties"]["VisibilityTimeout"]
        assert alarm["Threshold"] > visibility, job


def test_aurora_and_its_proxy_page_when_unhealthy(prod: Synth) -> None:
    found = alarms(prod)
    cluster_id = prod.logical_id(prod.stack.database.cluster)
    proxy_id = prod.logical_id(prod.stack.database.proxy)
    acu = found["billow-prod-db-acu-utilization"]
    assert acu["Namespace"] == "AWS/RDS" and acu["MetricName"] == "ACUUtilization"
    assert refs(acu["Dimensions"]) == {cluster_id} and acu["Threshold"] == 90
    proxy = found["billow-prod-db-proxy-availability"]
    assert proxy["MetricName"] == "AvailabilityPercentage" and proxy["ComparisonOperator"] == "LessThanThreshold"
    assert {d["Name"] for d in proxy["Dimensions"]} == {"ProxyName", "TargetGroup", "TargetRole"}
    assert proxy_id in refs(proxy["Dimensions"]) and proxy["Statistic"] == "Minimum"
    connections = found["billow-prod-db-connections"]
    assert connections["MetricName"] == "DatabaseConnections" and refs(connections["Dimensions"]) == {cluster_id}
    for a in (acu, proxy, connections):
        assert (a["DatapointsToAlarm"], a["EvaluationPeriods"]) == (3, 5)


def test_every_alarm_goes_to_the_topic(prod: Synth) -> None:
    topic_id = prod.logical_id(prod.stack.alarms.topic)
    assert all(refs(a["AlarmActions"]) == {topic_id} for a in alarms(prod).values())


# --- 2. bounded concurrency ------------------------------------------------------------------------------

def test_ingest_api_and_authorizer_have_reserved_concurrency(prod: Synth) -> None:
    from infra.constructs.functions import RESERVED_CONCURRENCY

    reserved = {name: prod.function(name)[1]["Properties"].get("ReservedConcurrentExecutions") for name in HANDLERS}
    assert {n: r for n, r in reserved.items() if r is not None} == RESERVED_CONCURRENCY
    assert set(RESERVED_CONCURRENCY) == {"ingest", "api", "authorizer"}
    # an account's default limit is 1,000, of which Lambda keeps 100 unreserved
    assert all(r > 0 for r in RESERVED_CONCURRENCY.values()) and sum(RESERVED_CONCURRENCY.values()) <= 900


def test_sqs_triggers_have_a_maximum_concurrency(prod: Synth) -> None:
    sqs_mappings = [m["Properties"] for m in prod.of_type("AWS::Lambda::EventSourceMapping").values()
                    if "Topics" not in m["Properties"]]
    assert len(sqs_mappings) >= 3  # billing_run's and notify_dispatch's ticks, notify_dispatch's wake-ups
    for m in sqs_mappings:
        assert 2 <= m["ScalingConfig"]["MaximumConcurrency"] <= 5, m  # 2 is SQS's minimum


def test_the_authorizer_has_memory_for_a_fast_cold_start(prod: Synth) -> None:
    """API Gateway gives a Lambda authorizer 10 s; CPU scales with memory. Its cold start runs no DDL
    (billow.bootstrap.build only checks the schema revisions in Lambda; the migrate trigger migrates)."""
    props = prod.function("authorizer")[1]["Properties"]
    assert props["MemorySize"] >= 512 and props["Timeout"] == 10


# --- 3. prod guardrails ----------------------------------------------------------------------------------

def test_prod_is_termination_protected_and_keeps_its_data(prod: Synth) -> None:
    assert prod.stack.termination_protection is True
    assembly = prod.app.synth()
    assert assembly.get_stack_by_name(prod.stack.stack_name).termination_protection is True
    retained = {"MSK cluster": prod.stack.streaming.cluster, "DB secret": prod.stack.database.secret,
                "documents bucket": prod.stack.billing.documents, "sink DLQ": prod.stack.dead_letters,
                "jobs DLQ": prod.stack.schedules.dead_letters}
    for what, construct in retained.items():
        res = prod.resources[prod.logical_id(construct)]
        assert res["DeletionPolicy"] == res["UpdateReplacePolicy"] == "Retain", what
    (cluster,) = prod.of_type("AWS::RDS::DBCluster").values()
    assert cluster["DeletionPolicy"] == "Snapshot" and cluster["Properties"]["DeletionProtection"] is True


def test_prod_synth_needs_an_explicit_account(monkeypatch: pytest.MonkeyPatch, lambda_assets: Any) -> None:
    from aws_cdk import App

    from infra.app import build_app

    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", "999999999999")  # the CLI's credentials do not count: say it
    with pytest.raises(ValueError, match=r"stage=prod needs an explicit account: -c account="):
        build_app(App(context={"stage": "prod"}), assets=lambda_assets[:2], require_account=True)
    build_app(App(context={"stage": "dev"}), assets=lambda_assets[:2], require_account=True)  # only prod


def test_non_prod_is_not_protected(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> None:
    dev = synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "dev"}, lambda_assets)
    assert dev.stack.termination_protection is False
    for construct in (dev.stack.streaming.cluster, dev.stack.database.secret, dev.stack.dead_letters):
        assert dev.resources[dev.logical_id(construct)].get("DeletionPolicy", "Delete") == "Delete"


# --- 5. smaller ------------------------------------------------------------------------------------------

def test_s3_traffic_stays_in_the_vpc_through_a_gateway_endpoint(prod: Synth) -> None:
    (s3,) = [e["Properties"] for e in prod.of_type("AWS::EC2::VPCEndpoint").values()
             if e["Properties"].get("VpcEndpointType") == "Gateway"]
    assert ".s3" in dumps(s3["ServiceName"])
    app_tables = {prod.stack.resolve(sn.route_table.route_table_id)["Ref"] for sn in prod.stack.network.vpc.private_subnets}
    assert app_tables <= refs(s3["RouteTableIds"])  # the functions' subnets (invoice documents, presigned URLs)


def test_only_this_accounts_scheduler_may_assume_the_scheduler_role(prod: Synth) -> None:
    role = prod.resources[prod.logical_id(prod.stack.schedules.role)]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_make_synth_leaves_the_template_in_cdk_out_and_prints_its_path(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lambda_assets: Any) -> None:
    import json
    from pathlib import Path

    import infra.app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDK_OUTDIR", raising=False)  # what the cdk CLI sets; `make synth` runs the app without it
    monkeypatch.setattr("layers.build.build", lambda arch: lambda_assets)
    infra.app.main()
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    template = tmp_path / "cdk.out" / "Billow-dev.template.json"
    assert printed == "template: cdk.out/Billow-dev.template.json"
    assert Path(printed.removeprefix("template: ")).resolve() == template.resolve()
    assert "AWS::Lambda::Function" in {r["Type"] for r in json.loads(template.read_text())["Resources"].values()}
