"""stage=prod keeps its data, each job handler consumes its schedule's queue, and a schedule whose handler is
missing fails synthesis instead of deploying a queue nothing reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.infra.support import Synth, refs, synthesize


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "prod"}, lambda_assets)


def test_prod_keeps_its_data(prod: Synth) -> None:
    (cluster,) = prod.of_type("AWS::RDS::DBCluster").values()
    assert cluster["Properties"]["DeletionProtection"] is True and cluster["DeletionPolicy"] == "Snapshot"
    assert cluster["Properties"]["ServerlessV2ScalingConfiguration"]["MinCapacity"] == 1
    for secret in (prod.stack.usage_store.secret, prod.stack.billing.stripe_secret):
        assert prod.resources[prod.logical_id(secret)]["DeletionPolicy"] == "Retain"
    assert prod.resources[prod.logical_id(prod.stack.billing.documents)]["DeletionPolicy"] == "Retain"
    assert not prod.of_type("Custom::S3AutoDeleteObjects")  # invoice documents outlive the stack
    assert len(prod.of_type("AWS::EC2::NatGateway")) == 2  # one per AZ
    outputs = prod.template.to_json()["Outputs"]
    assert len([o for o in outputs if o.startswith("NatPublicIp")]) == 2  # to allow-list at ClickHouse Cloud
    assert {lg["DeletionPolicy"] for lg in prod.of_type("AWS::Logs::LogGroup").values()} == {"Retain"}
    assert "AwsSolutions-RDS10" not in str(cluster.get("Metadata"))  # nothing to suppress in prod


def test_existing_job_handler_consumes_its_queue(prod: Synth) -> None:
    fn_id, fn = prod.function("billing_run")
    assert fn["Properties"]["Timeout"] == 300 and fn["Properties"]["Environment"]["Variables"]["BILLOW_NAMESPACE"] == "default"
    mappings = [m["Properties"] for m in prod.of_type("AWS::Lambda::EventSourceMapping").values()
                if m["Properties"]["FunctionName"] == {"Ref": fn_id}]
    assert len(mappings) == 1
    queue = prod.logical_id(prod.stack.schedules.queues["billing_run"])
    assert refs(mappings[0]["EventSourceArn"]) == {queue} and mappings[0]["BatchSize"] == 1
    visibility = prod.resources[queue]["Properties"]["VisibilityTimeout"]
    assert visibility >= fn["Properties"]["Timeout"]  # SQS triggers require it
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage"} <= prod.actions(prod.role_of("billing_run"))
    # error alarms are rates (issue 18): a math expression over the function's Errors and Invocations
    errors = [m["MetricStat"]["Metric"] for a in prod.of_type("AWS::CloudWatch::Alarm").values()
              for m in a["Properties"].get("Metrics", []) if m.get("MetricStat", {}).get("Metric", {}).get("MetricName")
              == "Errors"]
    assert {"Ref": fn_id} in [d["Value"] for a in errors for d in a["Dimensions"]]


def test_a_schedule_without_its_handler_fails_synthesis(tmp_path: Path, lambda_assets: Any) -> None:
    root = tmp_path / "functions"
    (root / "billing_run").mkdir(parents=True)
    (root / "billing_run" / "handler.py").write_text("def lambda_handler(event, context): ...\n")
    (root / "notify_dispatch").mkdir()  # a directory without handler.py is not a handler
    with pytest.raises(FileNotFoundError, match=r"notify_dispatch.*notify_dispatch/handler\.py"):
        synthesize(tmp_path / "cdk.out", {"stage": "prod"}, lambda_assets, functions_root=root)


def test_prod_is_cdk_nag_clean_too(prod: Synth) -> None:
    from aws_cdk.assertions import Annotations, Match

    annotations = Annotations.from_stack(prod.stack)
    found = [*annotations.find_error("*", Match.string_like_regexp(".*AwsSolutions-.*")),
             *annotations.find_warning("*", Match.string_like_regexp(".*(AwsSolutions|CdkNag).*"))]
    assert not found, [f"{e.id}: {str(e.entry.data)[:120]}" for e in found]


def test_context_is_validated() -> None:
    from aws_cdk import App

    from infra.app import Config

    ok = Config.from_app(App(context={"stage": "prod", "namespace": "acme_2", "account": "123456789012",
                                      "region": "eu-west-1"}))
    assert (ok.stage, ok.namespace, ok.arch, ok.account, ok.region) == ("prod", "acme_2", "arm64", "123456789012",
                                                                         "eu-west-1")
    with pytest.raises(ValueError, match="stage.*namespace.*arch"):
        Config.from_app(App(context={"stage": "Prod!", "namespace": "-bad", "arch": "mips"}))


def test_missing_assets_fail_with_the_build_command(tmp_path: Path) -> None:
    from aws_cdk import App

    from infra.app import build_app

    with pytest.raises(FileNotFoundError, match="layers.build"):
        build_app(App(context={"stage": "x"}), assets=(tmp_path / "deps", tmp_path / "code"))
